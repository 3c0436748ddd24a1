"""Numba kernels for TopK. Neuron-major: thread i owns features [f0, f0 + n).

Per context, a branch-free running max / first argmax over the row chunks (vectorised);
the sorted per-feature list is touched only when the context beats its k-th entry.
Order: value descending, then ctx_id ascending; empty slots (ctx_id -1) last.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS


@njit(**NJIT_OPTIONS)
def ranks_before(v1, c1, v2, c2):
    """True if (v1, c1) ranks strictly before (v2, c2)."""
    if v1 != v2:
        return v1 > v2
    if c1 < 0:
        return False
    return c2 < 0 or c1 < c2


@njit(**NJIT_OPTIONS)
def topk_insert(vals, ctxs, poss, f, v, c, p):
    """Insert context c (value v at pos p) into feature f's sorted list; one entry per context."""
    k = vals.shape[1]
    for i in range(k):
        if ctxs[f, i] == c:
            if not v > vals[f, i]:
                return
            for m in range(i, k - 1):  # drop the weaker entry of the same context
                vals[f, m], ctxs[f, m], poss[f, m] = vals[f, m + 1], ctxs[f, m + 1], poss[f, m + 1]
            vals[f, k - 1], ctxs[f, k - 1], poss[f, k - 1] = -np.inf, -1, -1
            break
    if not ranks_before(v, c, vals[f, k - 1], ctxs[f, k - 1]):
        return
    i = k - 1
    while i > 0 and ranks_before(v, c, vals[f, i - 1], ctxs[f, i - 1]):
        vals[f, i], ctxs[f, i], poss[f, i] = vals[f, i - 1], ctxs[f, i - 1], poss[f, i - 1]
        i -= 1
    vals[f, i], ctxs[f, i], poss[f, i] = v, c, p


@njit(**NJIT_OPTIONS)
def topk_begin(best, best_pos):
    """Reset the running max of a context (an all -inf context keeps pos 1)."""
    for j in range(best.shape[0]):
        best[j] = -np.inf
        best_pos[j] = 1


@njit(**NJIT_OPTIONS)
def topk_row(x, t, best, best_pos):
    """Fold row chunk x float32 [n] at position t into the running max (strict >: first pos)."""
    tt = np.int32(t)
    for j in range(x.shape[0]):
        gt = x[j] > best[j]
        best[j] = x[j] if gt else best[j]
        best_pos[j] = tt if gt else best_pos[j]


@njit(**NJIT_OPTIONS)
def topk_end(f0, n, ctx, best, best_pos, vals, ctxs, poss):
    """Offer the context's max of every feature to its list."""
    k = vals.shape[1]
    for j in range(n):
        f = f0 + j
        if ranks_before(best[j], ctx, vals[f, k - 1], ctxs[f, k - 1]):
            topk_insert(vals, ctxs, poss, f, best[j], ctx, best_pos[j])


@njit(parallel=True, **NJIT_OPTIONS)
def topk_update(acts, lengths, ctx_ids, chunk, vals, ctxs, poss):
    """acts float32 [batch, pos, feat]; vals/ctxs/poss [feat, k]."""
    n_batch, _, n_feat = acts.shape
    for c in prange((n_feat + chunk - 1) // chunk):
        f0 = c * chunk
        n = min(chunk, n_feat - f0)
        f1 = f0 + n
        best = np.empty(n, np.float32)
        best_pos = np.empty(n, np.int32)
        for b in range(n_batch):
            if lengths[b] <= 1:
                continue
            topk_begin(best, best_pos)
            for t in range(1, lengths[b]):
                topk_row(acts[b, t, f0:f1], t, best, best_pos)
            topk_end(f0, n, ctx_ids[b], best, best_pos, vals, ctxs, poss)


@njit(parallel=True, **NJIT_OPTIONS)
def topk_merge(vals, ctxs, poss, other_vals, other_ctxs, other_poss):
    """Fold another recorder's lists into these, feature by feature."""
    for f in prange(vals.shape[0]):
        for i in range(vals.shape[1]):
            if other_ctxs[f, i] >= 0:
                topk_insert(vals, ctxs, poss, f, other_vals[f, i], other_ctxs[f, i], other_poss[f, i])
