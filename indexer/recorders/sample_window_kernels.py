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
from indexer.recorders.finebins import fine_bin_nb, nearest_boundaries
from indexer.recorders.hashing import priority_nb
from indexer.recorders.topk_kernels import window_into

MARGIN = 3.0  # cap = MARGIN x the expected largest final-sample priority of the band
EDGE_BINS = 8  # fine bins either side of an estimated band edge that get the larger cap
NO_CAP = np.int64(0xFFFFFFFF)


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
def cap_of(mids_f, band_cap_f, q):
    """The cap of fine bin q of a feature whose estimated band edges are mids_f [Q] with
    band caps band_cap_f [Q+1]; near an edge (edges still move), the larger of its two bands'."""
    band = 0
    for j in range(mids_f.shape[0]):
        if mids_f[j] <= q:
            band += 1
    c = band_cap_f[band]
    for j in range(mids_f.shape[0]):
        if mids_f[j] - EDGE_BINS <= q < mids_f[j] + EDGE_BINS:
            c = max(c, max(band_cap_f[j], band_cap_f[j + 1]))
    return c


@njit(**NJIT_OPTIONS)
def entry_bin(w_bits, w_pos, f, slot, before):
    """The fine bin of pool entry (f, slot), from its own value in its window (at min(pos,
    before): a window starts at max(pos - before, 0)); w_bits: the windows' int32 bits."""
    return fine_bin_nb(w_bits[f, slot, min(np.int64(w_pos[f, slot]), before)])


@njit(**NJIT_OPTIONS)
def entry_cap(f, slot, mids, band_cap, w_bits, w_pos, before):
    return cap_of(mids[f], band_cap[f], entry_bin(w_bits, w_pos, f, slot, before))


@njit(**NJIT_OPTIONS)
def sample_windows_feature(f, x, qb, hb, inserted, rows, poss, starts, ctx_ids, acts, before, refresh, counts,
                           quantiles, per_bin, seed, key, mids, band_cap, w_vals, w_ctx, w_pos, w_free, w_top):
    """After quantile_feature folded feature f's tokens (qb: their fine bins, hb: their
    priorities, inserted: those that entered its kept pool, in token order): with
    ``refresh``, first new caps and a sweep (``refresh_feature``); then capture the window
    of each inserted token under its bin's cap, while the pool has free entries."""
    if w_ctx.shape[1] == 0:
        return
    if refresh:
        refresh_feature(f, counts, quantiles, per_bin, seed, key, mids, band_cap, w_vals, w_ctx, w_pos, w_free,
                        w_top, before)
    for i in inserted:
        q = qb[i]
        if hb[i] < cap_of(mids[f], band_cap[f], q):
            if w_top[f] == 0 and not refresh:  # full: tighter caps from the counts so far may free some
                refresh_feature(f, counts, quantiles, per_bin, seed, key, mids, band_cap, w_vals, w_ctx, w_pos,
                                w_free, w_top, before)
                refresh = True
                if hb[i] >= cap_of(mids[f], band_cap[f], q):
                    continue
            if w_top[f] == 0 and not _evict_worse(f, hb[i], cap_of(mids[f], band_cap[f], q), seed, key, mids,
                                                  band_cap, w_vals, w_ctx, w_pos, w_free, w_top, before):
                continue  # the pool holds likelier samples: finalize runs the model for this one if need be
            b = rows[i]
            c, t = ctx_ids[b], poss[i]
            w_top[f] -= 1
            slot = w_free[f, w_top[f]]
            s = starts[b]
            window_into(w_vals, f, slot, x, s, starts[b + 1] - s + 1, t, before, acts, b)
            w_ctx[f, slot], w_pos[f, slot] = c, t


@njit(**NJIT_OPTIONS)
def _evict_worse(f, prio, cap, seed, key, mids, band_cap, w_vals, w_ctx, w_pos, w_free, w_top, before):
    """A full pool: free the entry least likely to end a sample (largest priority relative to
    its cap) if it is less likely than a token of this priority and cap; whether one was."""
    w_bits = w_vals.view(np.int32)
    worst, worst_ratio = -1, prio / max(cap, 1)
    for slot in range(w_ctx.shape[1]):
        ratio = (priority_nb(seed, key, w_ctx[f, slot], w_pos[f, slot])
                 / max(entry_cap(f, slot, mids, band_cap, w_bits, w_pos, before), 1))
        if ratio > worst_ratio:
            worst, worst_ratio = slot, ratio
    if worst < 0:
        return False
    w_ctx[f, worst], w_pos[f, worst] = -1, -1
    w_free[f, w_top[f]] = worst
    w_top[f] += 1
    return True


@njit(**NJIT_OPTIONS)
def refresh_feature(f, counts, quantiles, per_bin, seed, key, mids, band_cap, w_vals, w_ctx, w_pos, w_free, w_top,
                    before):
    """Feature f's band edges and caps from its current fine counts (bands estimated as at
    the end: each quantile at the nearest fine boundary), then free its entries above their
    cap and rebuild its free stack."""
    n_fine, n_q = counts.shape[1], quantiles.shape[0]
    nearest_boundaries(counts[f], quantiles, mids[f])  # as the bands are cut at the end
    lo = 0
    for i in range(n_q + 1):
        hi = mids[f, i] if i < n_q else n_fine
        n = 0
        for q in range(lo, max(lo, hi)):
            n += counts[f, q]
        band_cap[f, i] = np.int64(MARGIN * per_bin * 4294967296.0 / max(n, 1))  # unclamped: ranks evictions
        lo = max(lo, hi)
    top = 0
    w_bits = w_vals.view(np.int32)
    for slot in range(w_ctx.shape[1]):
        c = w_ctx[f, slot]
        if c >= 0:
            if priority_nb(seed, key, c, w_pos[f, slot]) < entry_cap(f, slot, mids, band_cap, w_bits, w_pos, before):
                continue
            w_ctx[f, slot], w_pos[f, slot] = -1, -1
            w_vals[f, slot, :] = 0
        w_free[f, top] = slot
        top += 1
    w_top[f] = top


@njit(parallel=True, **NJIT_OPTIONS)
def refresh_all(counts, quantiles, per_bin, seed, keys, mids, band_cap, w_vals, w_ctx, w_pos, w_free, w_top, before):
    for f in prange(w_ctx.shape[0]):
        refresh_feature(f, counts, quantiles, per_bin, seed, keys[f], mids, band_cap, w_vals, w_ctx, w_pos, w_free,
                        w_top, before)


@njit(parallel=True, **NJIT_OPTIONS)
def merge_pool(w_vals, w_ctx, w_pos, w_free, w_top, o_vals, o_ctx, o_pos, seed, keys, mids, band_cap, before):
    """Other's entries into free entries: those under their bin's cap, not already here."""
    o_bits = o_vals.view(np.int32)
    for f in prange(w_ctx.shape[0]):
        for i in range(o_ctx.shape[1]):
            if o_ctx[f, i] < 0 or w_top[f] == 0:
                continue
            if not priority_nb(seed, keys[f], o_ctx[f, i], o_pos[f, i]) < entry_cap(f, i, mids, band_cap, o_bits,
                                                                                   o_pos, before):
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
            w_ctx[f, slot], w_pos[f, slot] = o_ctx[f, i], o_pos[f, i]
