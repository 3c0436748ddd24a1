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

# A band's cap: MARGIN x per_bin x 2**32 / (tokens in the band), MARGIN x the expected largest
# priority of its final sample, so a sample's token is under it unless that band's per_bin-th
# smallest priority is over MARGIN x its mean (Gamma(per_bin) > MARGIN x per_bin: 9e-4 at
# MARGIN 3, 2e-7 at 5). MARGIN = OVERSUBSCRIBE x the pool's entries per sample: a band's tokens
# under its cap are OVERSUBSCRIBE x its share of the pool, in expectation, and a full pool evicts
# the entry of largest priority relative to its cap (3 at the default 2.7 entries per sample);
# but at most MAX_MARGIN, past which a larger pool stays mostly free: a full one scans itself for
# each capture, and its refreshes each walk the fine counts (the GPT-2-small shape's stream ran
# at 0.6x with a pool of 6 per sample and a margin of 6.7).
OVERSUBSCRIBE = 10 / 9
MAX_MARGIN = 5.0
# Near an estimated band edge (the edges still move) a fine bin takes the larger cap of the two
# bands if it would change band should the edge's target rank move by ZONE_SIGMAS standard
# deviations of a quantile's rank (sqrt(n p (1 - p)) of n tokens) plus ZONE_SHARE of the smaller
# band (edge_zones). Counted in tokens, not fine bins: where fine bins are sparse (the top
# band's tail) a few tokens of drift span many of them, and where a feature's mass sits in a
# few fine bins (a head's entropy) one fine bin may hold more tokens than several bands. The
# zone was 8 fine bins either side, with the larger cap of the two bands; on
# the GPT-2-small shape that missed the top band's samples at its edge (41 of the 46 samples of
# 1.47M missed at 32k tokens with a pool of 6 per sample) and gave a head metric's near-empty
# top band's cap to the thousands of tokens of the bands below it, filling the pool (8% of the
# heads' samples missed). Now a zone bin takes the cap of the band it would join, counted with
# at least the fine bin next to the edge: an empty band's cap is not infinite for its zone.
# Eight standard deviations, not four: a corpus's tokens come in contexts, and a feature that
# fires on a construct fires on it several times in one context, so the counts near a tail edge
# vary about four times as much as independent tokens' would (a design effect of ~4). With
# four, 11 top-band samples of the 1.47M of the GPT-2-small shape's MLP at 65,536 tokens were
# missed, each evicted early in the stream (8 of them had arrived in the first 10 contexts)
# when the top band held a handful of tokens; with eight, none, and the stream ran 1.5% longer.
ZONE_SIGMAS = 8.0
ZONE_SHARE = 0.05
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
def cap_of(edges_f, band_cap_f, q):
    """The cap of fine bin q of a feature whose estimated band edges are edges_f [Q, 5] (the
    edge's fine bin m, its zone [lo, hi) of fine bins, and the caps of the bands above and
    below it should they take zone bins) with band caps band_cap_f [Q+1]; in an edge's zone
    (edges still move), also the cap of the band it would join (refresh_feature)."""
    band = 0
    for j in range(edges_f.shape[0]):
        if edges_f[j, 0] <= q:
            band += 1
    c = band_cap_f[band]
    for j in range(edges_f.shape[0]):
        if edges_f[j, 1] <= q < edges_f[j, 0]:
            c = max(c, edges_f[j, 3])
        elif edges_f[j, 0] <= q < edges_f[j, 2]:
            c = max(c, edges_f[j, 4])
    return c


@njit(**NJIT_OPTIONS)
def zone_tokens(n, quantiles, j):
    """The tokens either side of estimated edge j (of n tokens) that its zone spans, >= 1."""
    p = quantiles[j]
    lo_share = p - (quantiles[j - 1] if j > 0 else 0.0)
    hi_share = (quantiles[j + 1] if j + 1 < quantiles.shape[0] else 1.0) - p
    w = ZONE_SIGMAS * np.sqrt(n * p * (1.0 - p)) + ZONE_SHARE * n * min(lo_share, hi_share)
    return max(np.int64(np.ceil(w)), np.int64(1))


@njit(**NJIT_OPTIONS)
def edge_zones(counts_f, quantiles, edges_f):
    """edges_f[j, 1:3] = the zone [lo, hi) of edge j (fine bin m = edges_f[j, 0]): the fine bins
    that would change band if the edge moved to another fine-bin boundary that could be chosen
    (nearest to the target rank q_j n) once the target moves by up to zone_tokens tokens:
    bins lo..m-1 would join the band above, bins m..hi-1 the band below. A fine bin holding
    many more tokens than that cannot change band, however few tokens the band beside it has."""
    n_fine = counts_f.shape[0]
    n = 0
    for q in range(n_fine):
        n += counts_f[q]
    below, q = 0, 0  # below: tokens in fine bins < q
    for j in range(edges_f.shape[0]):  # edges ascend
        m = edges_f[j, 0]
        while q < m:
            below += counts_f[q]
            q += 1
        target, w = quantiles[j] * n, zone_tokens(n, quantiles, j)
        b, c = m, below
        while b > 0 and (c - counts_f[b - 1] + c) * 0.5 >= target - w:  # boundary b-1 could be nearest
            c -= counts_f[b - 1]
            b -= 1
        edges_f[j, 1] = b
        b, c = m, below
        while b < n_fine and (c + c + counts_f[b]) * 0.5 <= target + w:  # boundary b+1 could be nearest
            c += counts_f[b]
            b += 1
        edges_f[j, 2] = b


@njit(**NJIT_OPTIONS)
def entry_bin(w_bits, w_pos, f, slot, before):
    """The fine bin of pool entry (f, slot), from its own value in its window (at min(pos,
    before): a window starts at max(pos - before, 0)); w_bits: the windows' int32 bits."""
    return fine_bin_nb(w_bits[f, slot, min(np.int64(w_pos[f, slot]), before)])


@njit(**NJIT_OPTIONS)
def entry_cap(f, slot, edges, band_cap, w_bits, w_pos, before):
    return cap_of(edges[f], band_cap[f], entry_bin(w_bits, w_pos, f, slot, before))


@njit(**NJIT_OPTIONS)
def sample_windows_feature(f, x, qb, hb, inserted, rows, poss, starts, ctx_ids, acts, before, refresh, counts,
                           quantiles, per_bin, seed, key, edges, band_cap, w_vals, w_ctx, w_pos, w_free, w_top):
    """After quantile_feature folded feature f's tokens (qb: their fine bins, hb: their
    priorities, inserted: those that entered its kept pool, in token order): with
    ``refresh``, first new caps and a sweep (``refresh_feature``); then capture the window
    of each inserted token under its bin's cap, while the pool has free entries."""
    if w_ctx.shape[1] == 0:
        return
    if refresh:
        refresh_feature(f, counts, quantiles, per_bin, seed, key, edges, band_cap, w_vals, w_ctx, w_pos, w_free,
                        w_top, before)
    for i in inserted:
        q = qb[i]
        if hb[i] < cap_of(edges[f], band_cap[f], q):
            if w_top[f] == 0 and not refresh:  # full: tighter caps from the counts so far may free some
                refresh_feature(f, counts, quantiles, per_bin, seed, key, edges, band_cap, w_vals, w_ctx, w_pos,
                                w_free, w_top, before)
                refresh = True
                if hb[i] >= cap_of(edges[f], band_cap[f], q):
                    continue
            if w_top[f] == 0 and not _evict_worse(f, hb[i], cap_of(edges[f], band_cap[f], q), seed, key, edges,
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
def _evict_worse(f, prio, cap, seed, key, edges, band_cap, w_vals, w_ctx, w_pos, w_free, w_top, before):
    """A full pool: free the entry least likely to end a sample (largest priority relative to
    its cap) if it is less likely than a token of this priority and cap; whether one was."""
    w_bits = w_vals.view(np.int32)
    worst, worst_ratio = -1, prio / max(cap, 1)
    for slot in range(w_ctx.shape[1]):
        ratio = (priority_nb(seed, key, w_ctx[f, slot], w_pos[f, slot])
                 / max(entry_cap(f, slot, edges, band_cap, w_bits, w_pos, before), 1))
        if ratio > worst_ratio:
            worst, worst_ratio = slot, ratio
    if worst < 0:
        return False
    w_ctx[f, worst], w_pos[f, worst] = -1, -1
    w_free[f, w_top[f]] = worst
    w_top[f] += 1
    return True


@njit(**NJIT_OPTIONS)
def refresh_feature(f, counts, quantiles, per_bin, seed, key, edges, band_cap, w_vals, w_ctx, w_pos, w_free, w_top,
                    before):
    """Feature f's band edges and caps from its current fine counts (bands estimated as at
    the end: each quantile at the nearest fine boundary), then free its entries above their
    cap and rebuild its free stack."""
    n_fine, n_q = counts.shape[1], quantiles.shape[0]
    margin = min(OVERSUBSCRIBE * w_ctx.shape[1] / (n_q + 1), MAX_MARGIN * per_bin)
    nearest_boundaries(counts[f], quantiles, edges[f, :, 0])  # as the bands are cut at the end
    edge_zones(counts[f], quantiles, edges[f])
    lo = 0
    sizes = np.empty(n_q + 1, np.int64)
    for i in range(n_q + 1):
        hi = edges[f, i, 0] if i < n_q else n_fine
        n = 0
        for q in range(lo, max(lo, hi)):
            n += counts[f, q]
        sizes[i] = n
        band_cap[f, i] = np.int64(margin * 4294967296.0 / max(n, 1))  # unclamped: ranks evictions
        lo = max(lo, hi)
    for j in range(n_q):  # zone bins join the band beside with at least the fine bin next to the edge
        m = edges[f, j, 0]
        gain_up = counts[f, m - 1] if edges[f, j, 1] < m else 0
        gain_down = counts[f, m] if edges[f, j, 2] > m else 0
        edges[f, j, 3] = np.int64(margin * 4294967296.0 / max(sizes[j + 1] + gain_up, 1))
        edges[f, j, 4] = np.int64(margin * 4294967296.0 / max(sizes[j] + gain_down, 1))
    top = 0
    w_bits = w_vals.view(np.int32)
    for slot in range(w_ctx.shape[1]):
        c = w_ctx[f, slot]
        if c >= 0:
            if priority_nb(seed, key, c, w_pos[f, slot]) < entry_cap(f, slot, edges, band_cap, w_bits, w_pos, before):
                continue
            w_ctx[f, slot], w_pos[f, slot] = -1, -1
            w_vals[f, slot, :] = 0
        w_free[f, top] = slot
        top += 1
    w_top[f] = top


@njit(parallel=True, **NJIT_OPTIONS)
def refresh_all(counts, quantiles, per_bin, seed, keys, edges, band_cap, w_vals, w_ctx, w_pos, w_free, w_top, before):
    for f in prange(w_ctx.shape[0]):
        refresh_feature(f, counts, quantiles, per_bin, seed, keys[f], edges, band_cap, w_vals, w_ctx, w_pos, w_free,
                        w_top, before)


@njit(parallel=True, **NJIT_OPTIONS)
def merge_pool(w_vals, w_ctx, w_pos, w_free, w_top, o_vals, o_ctx, o_pos, seed, keys, edges, band_cap, before):
    """Other's entries into free entries: those under their bin's cap, not already here."""
    o_bits = o_vals.view(np.int32)
    for f in prange(w_ctx.shape[0]):
        for i in range(o_ctx.shape[1]):
            if o_ctx[f, i] < 0 or w_top[f] == 0:
                continue
            if not priority_nb(seed, keys[f], o_ctx[f, i], o_pos[f, i]) < entry_cap(f, i, edges, band_cap, o_bits,
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
