"""Numba kernels for TopK. Feature-major (feature_major.py): thread i owns features
[f0, f0 + n) and walks one feature at a time over the batch's tokens.

Per context, a branch-free running max / first argmax (vectorised); the sorted per-feature
list is touched only when the context beats its k-th entry.
Order: value descending, then ctx_id ascending; empty slots (ctx_id -1) last.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.feature_major import TILE, batch_tokens, transpose_tile


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


@njit(parallel=True, **NJIT_OPTIONS)
def topk_update(acts, lengths, ctx_ids, chunk, vals, ctxs, poss):
    """acts float32 [batch, pos, feat]; vals/ctxs/poss [feat, k]."""
    n_feat = acts.shape[2]
    rows, tposs, starts = batch_tokens(lengths)
    bits = acts.view(np.int32)
    for c in prange((n_feat + chunk - 1) // chunk):
        f1c = min(c * chunk + chunk, n_feat)
        buf = np.empty((TILE, rows.shape[0]), np.int32)
        for f0 in range(c * chunk, f1c, TILE):
            m = min(TILE, f1c - f0)
            transpose_tile(bits, rows, tposs, f0, m, buf)
            for j in range(m):
                topk_feature(f0 + j, buf[j].view(np.float32), starts, ctx_ids, vals, ctxs, poss)


@njit(parallel=True, **NJIT_OPTIONS)
def topk_merge(vals, ctxs, poss, other_vals, other_ctxs, other_poss):
    """Fold another recorder's lists into these, feature by feature."""
    for f in prange(vals.shape[0]):
        for i in range(vals.shape[1]):
            if other_ctxs[f, i] >= 0:
                topk_insert(vals, ctxs, poss, f, other_vals[f, i], other_ctxs[f, i], other_poss[f, i])


@njit(**NJIT_OPTIONS)
def topk_feature(f, x, starts, ctx_ids, vals, ctxs, poss):
    """Feature-major: fold feature f's values x float32 [n] (tokens in batch_tokens order,
    context b at x[starts[b]:starts[b + 1]]) into its list: each context's first max."""
    k = vals.shape[1]
    for b in range(starts.shape[0] - 1):
        s, e = starts[b], starts[b + 1]
        if e == s:
            continue
        best = np.float32(-np.inf)
        best_i = s
        for i in range(s, e):
            gt = x[i] > best
            best = x[i] if gt else best
            best_i = i if gt else best_i
        if ranks_before(best, ctx_ids[b], vals[f, k - 1], ctxs[f, k - 1]):
            topk_insert(vals, ctxs, poss, f, best, ctx_ids[b], np.int32(best_i - s + 1))
