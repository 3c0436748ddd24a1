"""Numba kernels for SampleWindows (sample_windows.py): capture inside the fused kernel
(``sample_windows_feature``), cap refreshes and sweeps, pool merges and lookups.

numba's cache keys each kernel on its own file's contents: a change here does not recompile
``fused_update`` (which inlines ``sample_windows_feature``); change fused.py too, or clear
``indexer/recorders/__pycache__``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.finebins import nearest_boundaries
from indexer.recorders.topk_kernels import window_into

MARGIN = 3.0  # cap = MARGIN x the expected largest final-sample priority of the band
EDGE_BINS = 8  # fine bins either side of an estimated band edge that get the larger cap
NO_CAP = np.uint32(0xFFFFFFFF)


@njit(parallel=True, **NJIT_OPTIONS)
def find_slots(w_ctx, w_pos, feature, ctx_id, pos):
    """Per query i, the pool slot of feature[i] holding (ctx_id[i], pos[i]), or -1 (a scan of
    that feature's few hundred entries)."""
    out = np.full(feature.shape[0], -1, np.int64)
    for i in prange(feature.shape[0]):
        f = feature[i]
        for s in range(w_ctx.shape[1]):
            if w_ctx[f, s] == ctx_id[i] and w_pos[f, s] == pos[i]:
                out[i] = s
                break
    return out


@njit(**NJIT_OPTIONS)
def _in_slots(s_ctxs, s_poss, f, q, c, t):
    for j in range(s_ctxs.shape[2]):
        if s_ctxs[f, q, j] == c and s_poss[f, q, j] == t:
            return True
    return False


@njit(**NJIT_OPTIONS)
def sample_windows_feature(f, x, qb, hb, inserted, rows, poss, starts, ctx_ids, acts, before, refresh, counts,
                           quantiles, cap, s_ctxs, s_poss, w_vals, w_prio, w_ctx, w_pos, w_q, w_free, w_top):
    """After quantile_feature folded feature f's tokens (qb: their fine bins, hb: their
    priorities, inserted: those that entered a bin's slots, in token order): with ``refresh``,
    first new caps and a sweep (``refresh_feature``); then capture the window of each
    inserted token under its bin's cap that still sits in its bin's sample slots, while the
    pool has free entries."""
    if w_ctx.shape[1] == 0:
        return
    if refresh:
        refresh_feature(f, counts, quantiles, cap, s_ctxs, s_poss, w_vals, w_prio, w_ctx, w_pos, w_q, w_free, w_top)
    cf = cap[f]
    for i in inserted:
        q = qb[i]
        if hb[i] < cf[q]:
            b = rows[i]
            c, t = ctx_ids[b], poss[i]
            if not _in_slots(s_ctxs, s_poss, f, q, c, t):
                continue
            if w_top[f] == 0 and not refresh:  # full: tighter caps from the counts so far may free some
                refresh_feature(f, counts, quantiles, cap, s_ctxs, s_poss, w_vals, w_prio, w_ctx, w_pos, w_q,
                                w_free, w_top)
                refresh = True
                if hb[i] >= cf[q]:
                    continue
            if w_top[f] == 0:
                continue  # the pool is full: finalize runs the model for this one if it stays a sample
            w_top[f] -= 1
            slot = w_free[f, w_top[f]]
            s = starts[b]
            window_into(w_vals, f, slot, x, s, starts[b + 1] - s + 1, t, before, acts, b)
            w_prio[f, slot], w_ctx[f, slot], w_pos[f, slot], w_q[f, slot] = hb[i], c, t, q


@njit(**NJIT_OPTIONS)
def refresh_feature(f, counts, quantiles, cap, s_ctxs, s_poss, w_vals, w_prio, w_ctx, w_pos, w_q, w_free, w_top):
    """Feature f's caps from its current fine counts (bands estimated as at the end: each
    quantile at the nearest fine boundary), then free its entries above their cap or no
    longer in their bin's slots, and rebuild its free stack."""
    n_fine, n_q = counts.shape[1], quantiles.shape[0]
    per_bin = s_ctxs.shape[2]
    bounds = np.empty(n_q + 2, np.int64)  # band i: fine bins bounds[i] .. bounds[i + 1] - 1
    bounds[0], bounds[n_q + 1] = 0, n_fine
    nearest_boundaries(counts[f], quantiles, bounds[1:n_q + 1])  # as the bands are cut at the end
    band_cap = np.empty(n_q + 1, np.uint32)
    for i in range(n_q + 1):
        lo, hi = bounds[i], max(bounds[i], bounds[i + 1])
        n = 0
        for q in range(lo, hi):
            n += counts[f, q]
        band_cap[i] = np.uint32(min(MARGIN * per_bin * 4294967296.0 / max(n, 1), 4294967295.0))
        for q in range(lo, hi):
            cap[f, q] = band_cap[i]
    for j in range(n_q):  # edges still move: near one, either band's cap
        c = max(band_cap[j], band_cap[j + 1])
        for q in range(max(bounds[j + 1] - EDGE_BINS, 0), min(bounds[j + 1] + EDGE_BINS, n_fine)):
            cap[f, q] = max(cap[f, q], c)
    top = 0
    for slot in range(w_ctx.shape[1]):
        c = w_ctx[f, slot]
        if c >= 0:
            q = w_q[f, slot]
            if w_prio[f, slot] < cap[f, q] and _in_slots(s_ctxs, s_poss, f, q, c, w_pos[f, slot]):
                continue
            w_ctx[f, slot], w_pos[f, slot], w_q[f, slot], w_prio[f, slot] = -1, -1, -1, 0
            w_vals[f, slot, :] = 0
        w_free[f, top] = slot
        top += 1
    w_top[f] = top


@njit(parallel=True, **NJIT_OPTIONS)
def refresh_all(counts, quantiles, cap, s_ctxs, s_poss, w_vals, w_prio, w_ctx, w_pos, w_q, w_free, w_top):
    for f in prange(w_ctx.shape[0]):
        refresh_feature(f, counts, quantiles, cap, s_ctxs, s_poss, w_vals, w_prio, w_ctx, w_pos, w_q, w_free, w_top)


@njit(parallel=True, **NJIT_OPTIONS)
def merge_pool(w_vals, w_prio, w_ctx, w_pos, w_q, w_free, w_top, o_vals, o_prio, o_ctx, o_pos, o_q,
               cap, s_ctxs, s_poss):
    """Other's entries into free entries: those under their bin's cap and (with s_ctxs) still
    in its sample slots, not already here."""
    for f in prange(w_ctx.shape[0]):
        for i in range(o_ctx.shape[1]):
            if o_ctx[f, i] < 0 or w_top[f] == 0 or not o_prio[f, i] < cap[f, o_q[f, i]]:
                continue
            if s_ctxs is not None and not _in_slots(s_ctxs, s_poss, f, o_q[f, i], o_ctx[f, i], o_pos[f, i]):
                continue
            dup = False
            for slot in range(w_ctx.shape[1]):
                if w_ctx[f, slot] == o_ctx[f, i] and w_pos[f, slot] == o_pos[f, i]:
                    dup = True
                    break
            if dup:
                continue
            w_top[f] -= 1
            slot = w_free[f, w_top[f]]
            w_vals[f, slot, :] = o_vals[f, i, :]
            w_prio[f, slot], w_ctx[f, slot], w_pos[f, slot], w_q[f, slot] = o_prio[f, i], o_ctx[f, i], o_pos[f, i], o_q[f, i]
