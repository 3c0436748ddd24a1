"""Exact, order-independent sums of float32 values (and of their squares) in integer limbs.

A value ``v`` with ``|v| < BOUND`` is cut into three integers by its magnitude, each step exact
in float64 (``frac`` of a non-negative float is exact), and given ``v``'s sign:

    m = |v|,   a = floor(m),   b = floor(frac(m) * 2**32),   c = floor(frac(frac(m) * 2**32) * 2**32),

so that ``a * 2**64 + b * 2**32 + c == trunc(|v| * 2**64)``: ``v`` on a grid of ``2**-64``,
rounded toward zero. That is ``v`` itself for every float32 of magnitude ``>= 2**-41`` (and the
square ``v * v``, exact in float64, when ``|v| >= 2**-9``); smaller values are truncated to the
grid, always the same way. (Cutting ``v`` itself would not be exact: ``frac(-2**-33)`` is
``1 - 2**-33``, which float64 rounds.)

An accumulator of ``n`` sums is one int64 array ``[ROWS, n]``:

    rows 0..3  limbs of weight 2**32, 2**0, 2**-32, 2**-64: the sum, in units of 2**-64, is
               ((L0 * 2**32 + L1) * 2**32 + L2) * 2**32 + L3;
    row 4      the float64 bits of a side sum of the values at or beyond ``BOUND`` (and NaN, inf).

Integer addition is associative, so the limbs do not depend on the order the values arrive in,
on how they are split into batches, shards or checkpoints, or on the backend (numba or torch):
``normalise`` brings rows 1..3 into ``[0, 2**32)`` and leaves the signed rest in row 0, one
representation per sum. **This holds below ``BOUND`` only**: the side sum is a float64 sum and
depends on order (activations of 65,536 or more are rare; an index with some still sums them).

Capacity: a value adds less than 2**32 in magnitude to each of rows 1..3 (``v * v < 2**32`` below ``BOUND``),
so between two normalisations a row takes ``MAX_VALUES`` values per sum; row 0 overflows only
past sums of 2**95. Callers normalise at the end of every update call.

Three implementations of the same arithmetic: numba (``split_nb``, called per value by the
stats kernels), torch (``add_t``, any device) and numpy with Python ints as the reference
(``add_np``, ``units``, ``reference_units``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from numba import njit

from indexer.recorders.common import NJIT_OPTIONS, RecorderError

BOUND = 2.0**16  # |v| below this is summed exactly; v * v < 2**32
ROWS = 5  # four limbs and the side sum's bits
SIDE = 4
LIMB = 2.0**32
MASK = (1 << 32) - 1
MAX_VALUES = (1 << 31) - 1  # values per sum between two normalisations


def zeros(n: int) -> np.ndarray:
    """A fresh accumulator of ``n`` sums (all rows zero: the side sum's bits of +0.0 too)."""
    return np.zeros((ROWS, n), np.int64)


def check_capacity(n_values: int) -> None:
    """RecorderError if one update call would add more values per sum than the limbs can hold."""
    if n_values > MAX_VALUES:
        raise RecorderError(f"{n_values} tokens in one batch but the exact sums take at most {MAX_VALUES}: "
                            "use a smaller batch")


# --- numba: one value at a time, inside the stats kernels ------------------------------------


@njit(inline="always", **NJIT_OPTIONS)
def split_nb(s):
    """The three limbs of a float64 ``s`` (``|s| < 2**32``): a*2**64 + b*2**32 + c = trunc(s * 2**64)."""
    m = abs(s)
    a = np.floor(m)
    r = (m - a) * LIMB
    b = np.floor(r)
    c = np.floor((r - b) * LIMB)
    ia, ib, ic = np.int64(a), np.int64(b), np.int64(c)
    neg = s < 0  # selects on the integers vectorise better than a multiply by copysign
    return (-ia if neg else ia), (-ib if neg else ib), (-ic if neg else ic)


@njit(**NJIT_OPTIONS)
def normalise_nb(acc):
    """Carry rows 3 -> 2 -> 1 -> 0 in place, so rows 1..3 lie in [0, 2**32)."""
    for j in range(acc.shape[1]):
        for row in range(3, 0, -1):
            carry = acc[row, j] >> 32
            acc[row, j] &= MASK
            acc[row - 1, j] += carry


# --- numpy: the reference, and merges on the CPU ---------------------------------------------


def split_np(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``split_nb`` over an array of float64."""
    m = np.abs(s)
    sign = np.copysign(1.0, s)
    a = np.floor(m)
    r = (m - a) * LIMB
    b = np.floor(r)
    c = np.floor((r - b) * LIMB)
    return (a * sign).astype(np.int64), (b * sign).astype(np.int64), (c * sign).astype(np.int64)


def side_np(acc: np.ndarray) -> np.ndarray:
    """The side sums (float64 [n]) of an accumulator: a view, writable if ``acc`` is."""
    return acc[SIDE].view(np.float64)


def normalise(acc) -> None:
    """``normalise_nb`` for a numpy array or a torch tensor (any device), in place."""
    for row in range(3, 0, -1):
        carry = acc[row] >> 32
        acc[row] &= MASK
        acc[row - 1] += carry


def add_np(total: np.ndarray, total_sq: np.ndarray, x: np.ndarray) -> None:
    """Reference: fold float32 values ``x`` [values, n] into the accumulators of x and x**2."""
    d = np.asarray(x, np.float32).astype(np.float64)
    small = np.abs(d) < BOUND
    for acc, values in ((total, d), (total_sq, d * d)):
        kept = np.where(small, values, 0.0)
        for row, limb in zip((1, 2, 3), split_np(kept)):
            acc[row] += limb.sum(0)
        side_np(acc)[:] += np.where(small, 0.0, values).sum(0)
        normalise(acc)


def merge_np(acc: np.ndarray, other: np.ndarray) -> None:
    """Add accumulator ``other`` into ``acc`` (numpy, in place)."""
    acc[:SIDE] += other[:SIDE]
    normalise(acc)
    side = side_np(acc)
    side += side_np(np.ascontiguousarray(other))


# --- torch: the same arithmetic on any device -------------------------------------------------


def add_t(acc: torch.Tensor, values: torch.Tensor, small: torch.Tensor) -> None:
    """Fold float64 ``values`` [rows, n] (``small``: ``|x| < BOUND`` of the values' x) into ``acc``.

    ``rows`` may be at most 2**30, so that a limb's column sum fits an int64 before it is added."""
    kept = torch.where(small, values, 0.0)
    m = kept.abs()
    sign = torch.where(kept < 0, -1.0, 1.0)  # -0.0 adds 0 either way
    a = torch.floor(m)
    r = (m - a) * LIMB
    b = torch.floor(r)
    c = torch.floor((r - b) * LIMB)
    for row, limb in zip((1, 2, 3), (a, b, c)):
        acc[row] += (limb * sign).to(torch.int64).sum(0)
    acc[SIDE].view(torch.float64).add_(torch.where(small, 0.0, values).sum(0))
    normalise(acc)


def merge_t(acc: torch.Tensor, other: torch.Tensor) -> None:
    acc[:SIDE] += other[:SIDE]
    normalise(acc)
    acc[SIDE].view(torch.float64).add_(other[SIDE].contiguous().view(torch.float64))


# --- Python ints: the exact values, and mean / std from them ----------------------------------


def units(acc: np.ndarray) -> list[int]:
    """The limb part of every sum as a Python int, in units of 2**-64."""
    limbs = np.asarray(acc)[:SIDE].astype(object)
    return list(((limbs[0] * 2**32 + limbs[1]) * 2**32 + limbs[2]) * 2**32 + limbs[3])


def reference_units(values) -> int:
    """Python-int reference: the sum of trunc(v * 2**64) over float values (each exact in float64)."""
    return sum(math.trunc(float(v) * 2.0**64) for v in values)


def mean_std(total: np.ndarray, total_sq: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean and population std of every sum, from its exact value (NaN where count is 0).

    The mean is correctly rounded from the exact sum; the std is the square root of the exact
    variance, to within an ulp: both are functions of the exact sums only."""
    sx, ss = units(total), units(total_sq)
    side_x, side_s = side_np(np.ascontiguousarray(total)), side_np(np.ascontiguousarray(total_sq))
    mean = np.full(len(sx), np.nan)
    std = np.full(len(sx), np.nan)
    for j, n in enumerate(int(c) for c in count):
        if n <= 0:
            continue
        if side_x[j] == 0.0 and side_s[j] == 0.0:
            mean[j] = sx[j] / (n << 64)
            std[j] = _sqrt_ratio(ss[j] * n * 2**64 - sx[j] ** 2, n * n << 128)
        elif math.isfinite(side_x[j]) and math.isfinite(side_s[j]):
            x = Fraction(sx[j], 2**64) + Fraction(float(side_x[j]))
            s = Fraction(ss[j], 2**64) + Fraction(float(side_s[j]))
            mean[j] = float(x / n)
            var = s * n - x * x
            std[j] = _sqrt_ratio(var.numerator, var.denominator * n * n)
        else:  # inf or NaN activations: float arithmetic gives inf / NaN, as it should
            mean[j] = (sx[j] / 2.0**64 + side_x[j]) / n
            with np.errstate(invalid="ignore", over="ignore"):
                var = (ss[j] / 2.0**64 + side_s[j]) / n - mean[j] ** 2
                std[j] = np.sqrt(np.maximum(var, 0.0))
    return mean, std


def _sqrt_ratio(p: int, q: int) -> float:
    """sqrt(p / q) for integers q > 0 (0 for p <= 0), from a 65-bit integer square root."""
    if p <= 0:
        return 0.0
    k = max(0, (132 - (p.bit_length() - q.bit_length())) // 2)
    return math.isqrt((p << 2 * k) // q) / (1 << k)
