"""Numba kernels for Stats. Neuron-major: thread i owns features [f0, f0 + n).

Rows are handed over as 1-d views of the thread's feature range, so the loops vectorise;
the histogram's scatter stays scalar (about half of the cost).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.histogram import N_BINS, hist_bin_nb


@njit(**NJIT_OPTIONS)
def stats_row(x, u, total, total_sq, lo, hi, n_active, hist, scratch):
    """Fold one row chunk x float32 [n] (u: its int32 bits) into the chunk's state views.

    All arguments are 1-d C views of the chunk (hist flattened [n * N_BINS]) indexed from
    0: an offset index would cost a negative-index check per element and no SIMD.
    """
    n = x.shape[0]
    for j in range(n):  # vectorised
        v = x[j]
        d = np.float64(v)
        total[j] += d
        total_sq[j] += d * d
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
    return total[f0:f1], total_sq[f0:f1], lo[f0:f1], hi[f0:f1], n_active[f0:f1], flat


@njit(parallel=True, **NJIT_OPTIONS)
def stats_update(acts, lengths, chunk, total, total_sq, lo, hi, n_active, hist):
    """acts float32 [batch, pos, feat]; state arrays [feat] and hist [feat, N_BINS]."""
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
