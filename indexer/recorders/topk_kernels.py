"""Numba kernels for TopK. Feature-major (feature_major.py): thread i owns features
[f0, f0 + n) and walks one feature at a time over the batch's tokens.

Per context, a branch-free running max / first argmax (vectorised); the sorted per-feature
list is touched only when the context beats its k-th entry.
Order: value descending, then ctx_id ascending; empty slots (ctx_id -1) last.

Each entry carries its window ``wins[f, i, :W]``: the feature's values at positions
``start .. stop - 1`` of the context, ``start = max(pos - before, 0)``,
``stop = min(pos + after + 1, length)`` (BOS included when the window reaches it), zeros
after ``stop - start``. Windows move with their entries; an insert copies the new one in.
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
def topk_insert(vals, ctxs, poss, wins, f, v, c, p):
    """Insert context c (value v at pos p) into feature f's sorted list; one entry per context.
    Returns the rank it took (its window ``wins[f, rank]`` is the caller's to write), or -1."""
    k = vals.shape[1]
    for i in range(k):
        if ctxs[f, i] == c:
            if not v > vals[f, i]:
                return -1
            for m in range(i, k - 1):  # drop the weaker entry of the same context
                vals[f, m], ctxs[f, m], poss[f, m] = vals[f, m + 1], ctxs[f, m + 1], poss[f, m + 1]
                wins[f, m, :] = wins[f, m + 1, :]
            vals[f, k - 1], ctxs[f, k - 1], poss[f, k - 1] = -np.inf, -1, -1
            wins[f, k - 1, :] = 0
            break
    if not ranks_before(v, c, vals[f, k - 1], ctxs[f, k - 1]):
        return -1
    i = k - 1
    while i > 0 and ranks_before(v, c, vals[f, i - 1], ctxs[f, i - 1]):
        vals[f, i], ctxs[f, i], poss[f, i] = vals[f, i - 1], ctxs[f, i - 1], poss[f, i - 1]
        wins[f, i, :] = wins[f, i - 1, :]
        i -= 1
    vals[f, i], ctxs[f, i], poss[f, i] = v, c, p
    return i


@njit(parallel=True, **NJIT_OPTIONS)
def topk_update(acts, lengths, ctx_ids, chunk, vals, ctxs, poss, wins, before):
    """acts float32 [batch, pos, feat]; vals/ctxs/poss [feat, k]; wins [feat, k, W]."""
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
                topk_feature(f0 + j, buf[j].view(np.float32), starts, ctx_ids, vals, ctxs, poss, wins, acts, before)


@njit(parallel=True, **NJIT_OPTIONS)
def topk_merge(vals, ctxs, poss, wins, other_vals, other_ctxs, other_poss, other_wins):
    """Fold another recorder's lists (and their windows) into these, feature by feature."""
    for f in prange(vals.shape[0]):
        for i in range(vals.shape[1]):
            if other_ctxs[f, i] >= 0:
                at = topk_insert(vals, ctxs, poss, wins, f, other_vals[f, i], other_ctxs[f, i], other_poss[f, i])
                if at >= 0:
                    wins[f, at, :] = other_wins[f, i, :]


@njit(**NJIT_OPTIONS)
def topk_feature(f, x, starts, ctx_ids, vals, ctxs, poss, wins, acts, before):
    """Feature-major: fold feature f's values x float32 [n] (tokens in batch_tokens order,
    context b at x[starts[b]:starts[b + 1]]) into its list: each context's first max, with
    its window (BOS's value, not in x, read from acts [batch, pos, feat])."""
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
        if not x[best_i] == x[best_i]:
            continue  # every value NaN: the feature saw no token of this context
        if ranks_before(best, ctx_ids[b], vals[f, k - 1], ctxs[f, k - 1]):
            p = best_i - s + 1
            at = topk_insert(vals, ctxs, poss, wins, f, best, ctx_ids[b], np.int32(p))
            if at >= 0:
                window_into(wins, f, at, x, s, e - s + 1, p, before, acts, b)


@njit(**NJIT_OPTIONS)
def window_into(wins, f, at, x, s, length, p, before, acts, b):
    """wins[f, at] = feature f's values over the window around position p of context b
    (length tokens, BOS included; position t >= 1 at x[s + t - 1])."""
    width = wins.shape[2]
    start = max(p - before, 0)
    stop = min(start + width, length, p + width - before)  # p + after + 1
    for j in range(width):
        t = start + j
        if t >= stop:
            wins[f, at, j] = 0
        elif t == 0:
            wins[f, at, j] = acts[b, 0, f]
        else:
            wins[f, at, j] = x[s + t - 1]
