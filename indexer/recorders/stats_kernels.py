"""Numba kernels for Stats. Feature-major (feature_major.py): thread i owns features
[f0, f0 + n) and walks one feature at a time over the batch's tokens.

Every per-value step is order-free, so the loop over a feature's tokens vectorises: the sums
of x and x**2 go into exact integer limbs (``indexer.recorders.exactsum``; the caller
normalises them once the update call is over), and min/max compare the float32 values as
order-preserving int32 keys (integer min/max reassociate; float min/max do not). Only values
beyond ``exactsum.BOUND`` (rare) take a second, scalar pass for the float64 side sums.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.exactsum import BOUND, SIDE, split_nb
from indexer.recorders.feature_major import TILE, batch_tokens, transpose_tile


@njit(inline="always", **NJIT_OPTIONS)
def order_key(u):
    """An int32 whose integer order is the float order of the float32 with bits u (-0.0 < 0.0)."""
    return u ^ ((u >> np.int32(31)) & np.int32(0x7FFFFFFF))


@njit(inline="always", **NJIT_OPTIONS)
def fold_feature(f, t1, t2, t3, s1, s2, s3, act, seen, kmin, kmax, count, total, total_sq, lo, hi, n_active):
    """Add one batch's limb sums, active and seen counts and min/max keys to feature f's state."""
    total[1, f] += t1
    total[2, f] += t2
    total[3, f] += t3
    total_sq[1, f] += s1
    total_sq[2, f] += s2
    total_sq[3, f] += s3
    n_active[f] += act
    count[f] += seen
    lo[f] = np.array([order_key(kmin)]).view(np.float32)[0]
    hi[f] = np.array([order_key(kmax)]).view(np.float32)[0]


@njit(inline="always", **NJIT_OPTIONS)
def add_side(f, d, total, total_sq):
    """Add float64 d to feature f's side sums if it is beyond exactsum.BOUND (inf too, NaN
    not); callers go in token order, so the float sums come out the same on every path."""
    if not abs(d) < BOUND and d == d:
        total[SIDE, f:f + 1].view(np.float64)[0] += d
        total_sq[SIDE, f:f + 1].view(np.float64)[0] += d * d


@njit(**NJIT_OPTIONS)
def stats_feature(f, x, u, count, total, total_sq, lo, hi, n_active):
    """Fold feature f's values x float32 [n] (u: their int32 bits) into its state; NaN
    values are tokens the feature did not see (common.py) and are skipped.

    count, lo, hi, n_active [feat]; total, total_sq: int64 [exactsum.ROWS, feat] limbs.
    """
    n = x.shape[0]
    t1 = t2 = t3 = s1 = s2 = s3 = np.int64(0)
    n_big = np.int64(0)
    n_nan = np.int64(0)
    act = np.int64(0)
    kmin = order_key(np.array([lo[f]]).view(np.int32)[0])
    kmax = order_key(np.array([hi[f]]).view(np.int32)[0])
    for i in range(n):  # vectorised
        d = np.float64(x[i])
        small = abs(d) < BOUND  # False for inf and NaN too: inf goes to the side sums
        seen = d == d
        kept = d if small else 0.0
        n_big += not small
        n_nan += not seen
        a, b, c = split_nb(kept)
        t1 += a
        t2 += b
        t3 += c
        a, b, c = split_nb(kept * kept)
        s1 += a
        s2 += b
        s3 += c
        k = order_key(u[i])
        kmin = k if (k < kmin) & seen else kmin
        kmax = k if (k > kmax) & seen else kmax
        act += x[i] > 0
    fold_feature(f, t1, t2, t3, s1, s2, s3, act, n - n_nan, kmin, kmax, count, total, total_sq, lo, hi, n_active)
    if n_big > n_nan:  # token order: the side sums are float64 sums (exactsum's docstring)
        for i in range(n):
            add_side(f, np.float64(x[i]), total, total_sq)


@njit(parallel=True, **NJIT_OPTIONS)
def stats_update(acts, lengths, chunk, count, total, total_sq, lo, hi, n_active):
    """acts float32 [batch, pos, feat]; total, total_sq int64 [exactsum.ROWS, feat]; count, lo,
    hi, n_active [feat]. The limbs are left for the caller to normalise."""
    n_feat = acts.shape[2]
    rows, poss, _ = batch_tokens(lengths)
    bits = acts.view(np.int32)
    for c in prange((n_feat + chunk - 1) // chunk):
        f1c = min(c * chunk + chunk, n_feat)
        buf = np.empty((TILE, rows.shape[0]), np.int32)
        for f0 in range(c * chunk, f1c, TILE):
            m = min(TILE, f1c - f0)
            transpose_tile(bits, rows, poss, f0, m, buf)
            for j in range(m):
                stats_feature(f0 + j, buf[j].view(np.float32), buf[j], count, total, total_sq, lo, hi, n_active)
