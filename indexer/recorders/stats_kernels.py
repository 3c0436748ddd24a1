"""Numba kernels for Stats. Neuron-major: thread i owns features [f0, f0 + n).

Rows are handed over as 1-d views of the thread's feature range, so the loops vectorise;
the histogram's scatter stays scalar (about half of the cost). Sums of x and x**2 go into
exact integer limbs (``indexer.recorders.exactsum``); the caller normalises the limbs once
the update call is over (``exactsum.normalise_nb``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.exactsum import BOUND, SIDE, split_nb
from indexer.recorders.histogram import N_BINS, hist_bin_nb


@njit(**NJIT_OPTIONS)
def stats_row(x, u, total, total_sq, lo, hi, n_active, hist, scratch):
    """Fold one row chunk x float32 [n] (u: its int32 bits) into the chunk's state views.

    ``total`` and ``total_sq`` are ``stats_views``' tuples (limb rows 1..3 as int64 [n], the
    side sum as float64 [n]). All arrays are 1-d C views of the chunk (hist flattened
    [n * N_BINS]) indexed from 0: an offset index would cost a negative-index check per
    element and no SIMD.
    """
    t1, t2, t3, t_side = total
    s1, s2, s3, s_side = total_sq
    n = x.shape[0]
    for j in range(n):  # vectorised: the selects are the only per-value choice
        v = x[j]
        d = np.float64(v)
        small = abs(d) < BOUND  # False for inf and NaN too: they go to the side sums
        kept = d if small else 0.0
        big = 0.0 if small else d
        a, b, c = split_nb(kept)
        t1[j] += a
        t2[j] += b
        t3[j] += c
        a, b, c = split_nb(kept * kept)
        s1[j] += a
        s2[j] += b
        s3[j] += c
        t_side[j] += big
        s_side[j] += big * big
        lo[j] = min(lo[j], v)
        hi[j] = max(hi[j], v)
        n_active[j] += v > 0
        scratch[j] = hist_bin_nb(u[j]) + j * N_BINS
    for j in range(n):  # scalar scatter: the dominant cost
        hist[scratch[j]] += 1


@njit(**NJIT_OPTIONS)
def stats_views(f0, n, total, total_sq, lo, hi, n_active, hist):
    """The chunk's views of the state arrays, in stats_row's order."""
    f1 = f0 + n
    flat = hist.reshape(-1)[f0 * N_BINS:f1 * N_BINS]
    tv = (total[1, f0:f1], total[2, f0:f1], total[3, f0:f1], total[SIDE, f0:f1].view(np.float64))
    sv = (total_sq[1, f0:f1], total_sq[2, f0:f1], total_sq[3, f0:f1], total_sq[SIDE, f0:f1].view(np.float64))
    return tv, sv, lo[f0:f1], hi[f0:f1], n_active[f0:f1], flat


@njit(parallel=True, **NJIT_OPTIONS)
def stats_update(acts, lengths, chunk, total, total_sq, lo, hi, n_active, hist):
    """acts float32 [batch, pos, feat]; total, total_sq int64 [exactsum.ROWS, feat]; lo, hi,
    n_active [feat]; hist [feat, N_BINS]. The limbs are left for the caller to normalise."""
    n_batch, _, n_feat = acts.shape
    bits = acts.view(np.int32)
    for c in prange((n_feat + chunk - 1) // chunk):
        f0 = c * chunk
        n = min(chunk, n_feat - f0)
        f1 = f0 + n
        tv, sv, lv, hv, av, histv = stats_views(f0, n, total, total_sq, lo, hi, n_active, hist)
        scratch = np.empty(n, np.int32)
        for b in range(n_batch):
            for t in range(1, lengths[b]):
                stats_row(acts[b, t, f0:f1], bits[b, t, f0:f1], tv, sv, lv, hv, av, histv, scratch)
