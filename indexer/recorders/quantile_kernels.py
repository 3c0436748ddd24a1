"""Numba kernels for QuantileSampler. Neuron-major: thread i owns features [f0, f0 + n).

Per token and feature: the fine bin from the value's bits and the priority hash (a
vectorised pass), then a count and one compare of the hash against the largest kept
priority of that fine bin (a gather). Only tokens under it, rare once a bin is full, meet
the sorted per-bin list. Slots are sorted by (priority, ctx_id, pos) ascending.

numba's on-disk cache keys on this file only: after changing the grid in finebins.py, touch
this file (and fused.py) so the kernels recompile. Grid: 64 sub-bins per octave, 2**-10..2**10.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.finebins import fine_bin_nb
from indexer.recorders.hashing import context_hash_nb, fmix32_nb, token_hash_nb


@njit(**NJIT_OPTIONS)
def _before(p1, c1, t1, p2, c2, t2):
    if p1 != p2:
        return p1 < p2
    if c1 != c2:
        return c1 < c2
    return t1 < t2


@njit(**NJIT_OPTIONS)
def sample_insert(prio, vals, ctxs, poss, f, q, p, v, c, t):
    """Offer token (c, t) with priority p and value v to fine bin q of feature f; its slot or -1."""
    last = prio.shape[2] - 1
    if not _before(p, c, t, prio[f, q, last], ctxs[f, q, last], poss[f, q, last]):
        return -1
    i = last
    while i > 0 and _before(p, c, t, prio[f, q, i - 1], ctxs[f, q, i - 1], poss[f, q, i - 1]):
        i -= 1
    if i > 0 and prio[f, q, i - 1] == p and ctxs[f, q, i - 1] == c and poss[f, q, i - 1] == t:
        return -1  # the same token again
    for m in range(last, i, -1):
        prio[f, q, m], vals[f, q, m] = prio[f, q, m - 1], vals[f, q, m - 1]
        ctxs[f, q, m], poss[f, q, m] = ctxs[f, q, m - 1], poss[f, q, m - 1]
    prio[f, q, i], vals[f, q, i], ctxs[f, q, i], poss[f, q, i] = p, v, c, t
    return i


@njit(**NJIT_OPTIONS)
def quantile_begin(f0, n, keys):
    """Per-chunk scratch: keys [n], fine bins [n], hashes [n]."""
    return keys[f0:f0 + n].copy(), np.empty(n, np.int32), np.empty(n, np.uint32)


@njit(**NJIT_OPTIONS)
def quantile_row(x, u, t, f0, ctx, tok_hash, keys, bins, hashes, counts, prio, vals, ctxs, poss):
    """Fold row chunk x float32 [n] (u: its int32 bits; token (ctx, t), features f0..)."""
    n = x.shape[0]
    last = prio.shape[2] - 1
    for j in range(n):  # vectorised
        bins[j] = fine_bin_nb(u[j])
        hashes[j] = fmix32_nb(np.uint32(tok_hash ^ keys[j]))
    for j in range(n):
        f, q = f0 + j, bins[j]
        counts[f, q] += 1
        if np.int64(hashes[j]) <= prio[f, q, last]:
            sample_insert(prio, vals, ctxs, poss, f, q, np.int64(hashes[j]), x[j], ctx, t)


@njit(parallel=True, **NJIT_OPTIONS)
def quantile_update(acts, lengths, ctx_ids, chunk, seed, keys, counts, prio, vals, ctxs, poss):
    """acts float32 [batch, pos, feat]; counts [feat, N_FINE]; samples [feat, N_FINE, per_bin]."""
    n_batch, _, n_feat = acts.shape
    bits = acts.view(np.int32)
    for c in prange((n_feat + chunk - 1) // chunk):
        f0 = c * chunk
        n = min(chunk, n_feat - f0)
        k, bins, hashes = quantile_begin(f0, n, keys)
        for b in range(n_batch):
            ch = context_hash_nb(seed, ctx_ids[b])
            for t in range(1, lengths[b]):
                quantile_row(acts[b, t, f0:f0 + n], bits[b, t, f0:f0 + n], t, f0, ctx_ids[b],
                             token_hash_nb(ch, t), k, bins, hashes, counts, prio, vals, ctxs, poss)


@njit(parallel=True, **NJIT_OPTIONS)
def quantile_merge(prio, vals, ctxs, poss, o_prio, o_vals, o_ctxs, o_poss):
    """Fold another sampler's slots into these (counts are summed by numpy)."""
    for f in prange(prio.shape[0]):
        for q in range(prio.shape[1]):
            if o_ctxs[f, q, 0] < 0:
                continue
            for i in range(prio.shape[2]):
                if o_ctxs[f, q, i] >= 0:
                    sample_insert(prio, vals, ctxs, poss, f, q, o_prio[f, q, i],
                                  o_vals[f, q, i], o_ctxs[f, q, i], o_poss[f, q, i])


@njit(parallel=True, **NJIT_OPTIONS)
def band_samples(prio, vals, ctxs, poss, bounds, out_prio, out_vals, out_ctxs, out_poss):
    """Per feature and band (fine bins bounds[f, i-1] .. bounds[f, i]), the per_bin smallest
    (priority, ctx, pos) among its fine bins' slots, into out_* [feat, bands, per_bin]."""
    n_feat, n_fine, per_bin = prio.shape
    n_bounds = bounds.shape[1]
    for f in prange(n_feat):
        band = 0
        for q in range(n_fine):
            while band < n_bounds and q >= bounds[f, band]:
                band += 1
            for i in range(per_bin):
                if ctxs[f, q, i] < 0:
                    break
                if sample_insert(out_prio[f], out_vals[f], out_ctxs[f], out_poss[f], 0, band,
                                 prio[f, q, i], vals[f, q, i], ctxs[f, q, i], poss[f, q, i]) < 0:
                    break  # the fine bin's list is sorted: the rest rank lower still
