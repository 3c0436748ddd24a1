"""Numba kernels for Stats. Feature-major (feature_major.py): thread i owns features
[f0, f0 + n) and walks one feature at a time over the batch's tokens, in token order.

The sums and min/max vectorise; the histogram's scatter stays scalar (into 129 bins, L1).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.feature_major import TILE, batch_tokens, transpose_tile
from indexer.recorders.histogram import N_BINS, hist_bin_nb


@njit(parallel=True, **NJIT_OPTIONS)
def stats_update(acts, lengths, chunk, total, total_sq, lo, hi, n_active, hist):
    """acts float32 [batch, pos, feat]; state arrays [feat] and hist [feat, N_BINS]."""
    n_feat = acts.shape[2]
    rows, poss, _ = batch_tokens(lengths)
    bits = acts.view(np.int32)
    for c in prange((n_feat + chunk - 1) // chunk):
        f1c = min(c * chunk + chunk, n_feat)
        buf = np.empty((TILE, rows.shape[0]), np.int32)
        scratch = np.empty(rows.shape[0], np.int32)
        for f0 in range(c * chunk, f1c, TILE):
            m = min(TILE, f1c - f0)
            transpose_tile(bits, rows, poss, f0, m, buf)
            for j in range(m):
                stats_feature(f0 + j, buf[j].view(np.float32), buf[j], total, total_sq, lo, hi,
                              n_active, hist, scratch)


@njit(**NJIT_OPTIONS)
def stats_feature(f, x, u, total, total_sq, lo, hi, n_active, hist, scratch):
    """Feature-major: fold feature f's values x float32 [n] (u: their int32 bits)."""
    n = x.shape[0]
    s, s2 = total[f], total_sq[f]
    mn, mx = lo[f], hi[f]
    act = n_active[f]
    for i in range(n):  # vectorised, summed in token order
        v = x[i]
        d = np.float64(v)
        s += d
        s2 += d * d
        mn = min(mn, v)
        mx = max(mx, v)
        act += v > 0
        scratch[i] = hist_bin_nb(u[i])
    total[f], total_sq[f], lo[f], hi[f], n_active[f] = s, s2, mn, mx, act
    h = hist[f]
    for i in range(n):  # scalar scatter into the feature's 129 bins (L1)
        h[scratch[i]] += 1
