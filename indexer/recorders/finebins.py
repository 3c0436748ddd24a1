"""The fine value grid of the quantile sampler: fixed, global, computed from float32 bits.

The grid is the same for every feature, run and shard, so fine-bin counts merge by addition
and the bins' bottom-k samples merge exactly. Like the stats histogram (histogram.py) it is
"symlog", but finer and wider: with a = |x| as bits and SUB_BITS = 6,

    bin ZERO          |x| < 2**-10 (also subnormals and -0.0)
    bin ZERO + 1 + k  x > 0,  k = 64 * (exponent + 10) + top 6 mantissa bits, k < N_SIDE
    bin ZERO - 1 - k  x < 0,  the mirror image

so 64 sub-bins per octave (each at most 1.6% wide relative to its value) over
2**-10 <= |x| < 2**10; |x| >= 2**10 (also inf) is clamped into the outermost bin of its
sign. Bins are numbered in increasing value. `lower_edges()` gives, per bin j, the float32
e_j with ``x >= e_j  <=>  bin(x) >= j`` for every non-NaN float32 x, so a band of bins
[j, j') is exactly the values e_j <= x < e_j'.

>>> int(fine_bins_np(np.float32([0.0]))[0]) == ZERO
True
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from indexer.recorders.common import NJIT_OPTIONS

LOG2_MIN, LOG2_MAX, SUB_BITS = -10, 10, 6
N_SIDE = (LOG2_MAX - LOG2_MIN) << SUB_BITS  # 1280 bins per sign
N_FINE = 2 * N_SIDE + 1  # 2561
ZERO = N_SIDE
_LO = (127 + LOG2_MIN) << 23
_HI = (127 + LOG2_MAX) << 23
_SHIFT = 23 - SUB_BITS
_ABS = 0x7FFFFFFF


def magnitudes() -> np.ndarray:
    """float64 [N_SIDE + 1]: m_k, the lower magnitude of side bin k (m_N_SIDE = 2**LOG2_MAX)."""
    k = np.arange(N_SIDE + 1)
    octave, sub = k >> SUB_BITS, k & ((1 << SUB_BITS) - 1)
    return np.ldexp(1.0 + sub / (1 << SUB_BITS), LOG2_MIN + octave)


def lower_edges() -> np.ndarray:
    """float32 [N_FINE]: e_j with x >= e_j exactly when bin(x) >= j (e_0 = -inf)."""
    m = magnitudes().astype(np.float32)
    out = np.empty(N_FINE, np.float32)
    out[0] = -np.inf
    j = np.arange(1, ZERO + 1)  # bins at or below zero: x > -m_(ZERO - j)
    out[1:ZERO + 1] = np.nextafter(-m[ZERO - j], np.float32(np.inf))
    out[ZERO + 1:] = m[:N_SIDE]  # positive bins: x >= m_k
    return out


def fine_bins_np(x: np.ndarray) -> np.ndarray:
    """Reference fine bins (int64) of a float32 array."""
    u = np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
    a = u & _ABS
    k = (np.minimum(a, _HI - 1) - _LO) >> _SHIFT
    return np.where(a < _LO, ZERO, np.where(u >= 0, ZERO + 1 + k, ZERO - 1 - k))


@njit(**NJIT_OPTIONS)
def fine_bin_nb(u):
    """Fine bin of one float32 given as its int32 bit pattern."""
    a = u & np.int32(_ABS)
    k = (min(a, np.int32(_HI - 1)) - np.int32(_LO)) >> np.int32(_SHIFT)
    if a < np.int32(_LO):
        return np.int32(ZERO)
    return np.int32(ZERO + 1) + k if u >= 0 else np.int32(ZERO - 1) - k


def fine_bins_t(x: torch.Tensor) -> torch.Tensor:
    """int64 fine bins of a float32 tensor, same shape."""
    u = x.contiguous().view(torch.int32).to(torch.int64)
    a = u & _ABS
    k = (a.clamp(max=_HI - 1) - _LO) >> _SHIFT
    side = torch.where(u >= 0, ZERO + 1 + k, ZERO - 1 - k)
    return torch.where(a < _LO, torch.full_like(side, ZERO), side)


def choose_boundaries(counts: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """int64 [feat, Q]: per feature and requested quantile q, the fine-bin boundary j (band
    edge between bins j-1 and j, 0 <= j < N_FINE) whose share of tokens below, cum_j / n, is
    nearest to q (the lower boundary on ties). Non-decreasing along Q.

    Ten tokens at 1.0 and ten at 2.0: every boundary between them splits them in half; the
    lowest one, just above the fine bin of 1.0, is chosen.

    >>> counts = np.zeros((1, N_FINE), np.int64)
    >>> counts[0, fine_bins_np(np.float32([1.0, 2.0]))] = 10
    >>> int(choose_boundaries(counts, np.array([0.5]))[0, 0]) == int(fine_bins_np(np.float32([1.0]))[0]) + 1
    True
    """
    counts = np.ascontiguousarray(counts, np.int64)
    quantiles = np.ascontiguousarray(quantiles, np.float64)
    out = np.empty((counts.shape[0], quantiles.shape[0]), np.int64)
    for f in range(counts.shape[0]):
        nearest_boundaries(counts[f], quantiles, out[f])
    return out


@njit(**NJIT_OPTIONS)
def nearest_boundaries(counts, quantiles, out):
    """One feature of `choose_boundaries`: counts int64 [N_FINE] -> out[j] for each quantile
    (also what the sample-window pool estimates its bands with while streaming)."""
    n_fine = counts.shape[0]
    total = 0
    for q in range(n_fine):
        total += counts[q]
    u, cum_u = 0, 0  # u: the first boundary with cum_u (tokens in bins < u) >= target
    for j in range(quantiles.shape[0]):
        target = quantiles[j] * total
        while u < n_fine and cum_u < target:
            cum_u += counts[u]
            u += 1
        upper = min(u, n_fine - 1)
        cum_upper = cum_u if u < n_fine else cum_u - counts[n_fine - 1]
        lower = max(upper - 1, 0)
        cum_lower = cum_upper - counts[lower] if upper > 0 else 0
        out[j] = lower if (target - cum_lower) <= (cum_upper - target) else upper
