"""Numba kernels for QuantileSampler. Neuron-major: thread i owns features [f0, f0 + n).

Per token and feature the vectorised fast path costs one hash and, per edge, a compare
(bin counts are kept as "at or above edge q" counters) and a test of the hash against
the threshold (largest kept priority) of the bin above. Only tokens under their bin's
threshold, rare once the bins are full, meet the sorted per-bin list. Slots are sorted by (priority, ctx_id, pos) ascending.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.hashing import context_hash_nb, fmix32_nb, token_hash_nb

BLOCK = 64  # features per hit check


@njit(**NJIT_OPTIONS)
def _before(p1, c1, t1, p2, c2, t2):
    if p1 != p2:
        return p1 < p2
    if c1 != c2:
        return c1 < c2
    return t1 < t2


@njit(**NJIT_OPTIONS)
def sample_insert(prio, vals, ctxs, poss, f, q, p, v, c, t):
    """Offer token (c, t) with priority p and value v to bin q of feature f; True if kept."""
    last = prio.shape[2] - 1
    if not _before(p, c, t, prio[f, q, last], ctxs[f, q, last], poss[f, q, last]):
        return False
    i = last
    while i > 0 and _before(p, c, t, prio[f, q, i - 1], ctxs[f, q, i - 1], poss[f, q, i - 1]):
        i -= 1
    if i > 0 and prio[f, q, i - 1] == p and ctxs[f, q, i - 1] == c and poss[f, q, i - 1] == t:
        return False  # the same token again
    for m in range(last, i, -1):
        prio[f, q, m], vals[f, q, m] = prio[f, q, m - 1], vals[f, q, m - 1]
        ctxs[f, q, m], poss[f, q, m] = ctxs[f, q, m - 1], poss[f, q, m - 1]
    prio[f, q, i], vals[f, q, i], ctxs[f, q, i], poss[f, q, i] = p, v, c, t
    return True


@njit(**NJIT_OPTIONS)
def threshold(prio, f, q):
    """uint32 filter of bin q of feature f: its largest kept priority (max while not full)."""
    return np.uint32(min(prio[f, q, prio.shape[2] - 1], np.int64(0xFFFFFFFF)))


@njit(**NJIT_OPTIONS)
def quantile_begin(f0, n, edges, keys, prio):
    """Per-chunk scratch: edges [Q, n], keys [n], thresholds [Q+1, n], hashes [n],
    hit flags [n], at-or-above-edge counters [Q, n]."""
    n_edges = edges.shape[1]
    e = np.empty((n_edges, n), np.float32)
    thr = np.empty((n_edges + 1, n), np.uint32)
    for j in range(n):
        for q in range(n_edges):
            e[q, j] = edges[f0 + j, q]
        for q in range(n_edges + 1):
            thr[q, j] = threshold(prio, f0 + j, q)
    above = np.zeros((n_edges, n), np.int32)
    return e, keys[f0:f0 + n].copy(), thr, np.empty(n, np.uint32), np.empty(n, np.int32), above


@njit(**NJIT_OPTIONS)
def quantile_row(x, t, f0, ctx, tok_hash, e, keys, thr, hashes, hit, above,
                 prio, vals, ctxs, poss):
    """Fold row chunk x float32 [n] (token (ctx, t), features f0..) into counters and samples.

    Branch-free over the bins: as x passes edge q the candidate test switches to bin q+1's
    threshold (edges are non-decreasing), so no gather is needed. Only candidates, rare
    once the bins are full, reach the scalar insert.
    """
    n, n_edges = x.shape[0], e.shape[0]
    t0 = thr[0]
    for j in range(n):
        h = fmix32_nb(np.uint32(tok_hash ^ keys[j]))
        hashes[j] = h
        hit[j] = np.int32(1) if h <= t0[j] else np.int32(0)
    for q in range(n_edges):
        eq, aq, tq = e[q], above[q], thr[q + 1]
        for j in range(n):
            ge = x[j] >= eq[j]
            aq[j] += np.int32(1) if ge else np.int32(0)
            under = np.int32(1) if hashes[j] <= tq[j] else np.int32(0)
            hit[j] = under if ge else hit[j]
    for j0 in range(0, n, BLOCK):  # a rare hit costs a scalar scan of one block only
        j1 = min(n, j0 + BLOCK)
        hits = 0
        for j in range(j0, j1):
            hits += hit[j]
        if hits == 0:
            continue
        for j in range(j0, j1):
            if hit[j]:
                q = 0
                for i in range(n_edges):
                    q += x[j] >= e[i, j]
                if sample_insert(prio, vals, ctxs, poss, f0 + j, q, np.int64(hashes[j]), x[j], ctx, t):
                    thr[q, j] = threshold(prio, f0 + j, q)


@njit(**NJIT_OPTIONS)
def quantile_end(f0, n, n_tokens, above, counts):
    """Turn the at-or-above counters into per-bin counts."""
    n_edges = above.shape[0]
    for j in range(n):
        below = n_tokens
        for q in range(n_edges):
            counts[f0 + j, q] += below - above[q, j]
            below = above[q, j]
        counts[f0 + j, n_edges] += below


@njit(parallel=True, **NJIT_OPTIONS)
def quantile_update(acts, lengths, ctx_ids, chunk, seed, keys, edges,
                    counts, prio, vals, ctxs, poss):
    """acts float32 [batch, pos, feat]; counts [feat, Q+1]; samples [feat, Q+1, per_bin]."""
    n_batch, _, n_feat = acts.shape
    n_tokens = 0
    for b in range(n_batch):
        n_tokens += max(lengths[b] - 1, 0)
    for c in prange((n_feat + chunk - 1) // chunk):
        f0 = c * chunk
        n = min(chunk, n_feat - f0)
        e, k, thr, hashes, hit, above = quantile_begin(f0, n, edges, keys, prio)
        for b in range(n_batch):
            ch = context_hash_nb(seed, ctx_ids[b])
            for t in range(1, lengths[b]):
                quantile_row(acts[b, t, f0:f0 + n], t, f0, ctx_ids[b], token_hash_nb(ch, t),
                             e, k, thr, hashes, hit, above, prio, vals, ctxs, poss)
        quantile_end(f0, n, n_tokens, above, counts)


@njit(parallel=True, **NJIT_OPTIONS)
def quantile_merge(prio, vals, ctxs, poss, o_prio, o_vals, o_ctxs, o_poss):
    """Fold another sampler's slots into these (counts are summed by numpy)."""
    for f in prange(prio.shape[0]):
        for q in range(prio.shape[1]):
            for i in range(prio.shape[2]):
                if o_ctxs[f, q, i] >= 0:
                    sample_insert(prio, vals, ctxs, poss, f, q, o_prio[f, q, i],
                                  o_vals[f, q, i], o_ctxs[f, q, i], o_poss[f, q, i])
