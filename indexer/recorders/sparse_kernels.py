"""The fused numba kernel for sparse sites (SAE latents, ``skip_zeros``): work per non-zero.

A latent is zero on most tokens. The dense kernel (fused.py) transposes every feature's values
over the batch and runs top-k and stats over all of them; here one sequential pass over the
batch (token-major, contiguous) lists each feature's non-zero tokens, and each feature then
walks only its list: stats (a zero adds nothing to the exact sums; the count is every token,
and min/max take 0 in when the feature had a zero), top-k (each context's first max among its
non-zero tokens: zeros are never examples) and the keep rule (quantile_kernels.quantile_feature
skips zeros with a compare). Window values are read from a per-feature buffer holding the
feature's values over the batch, zeros included, filled from the list.

Results equal the dense kernel with ``skip_zeros`` and the torch backend bit for bit (zeros are
made +0.0 first: bundle.FeatureRecorders.update).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.exactsum import BOUND, split_nb
from indexer.recorders.feature_major import batch_tokens, token_hashes
from indexer.recorders.keep_rule import N_GROUPS
from indexer.recorders.quantile_kernels import quantile_feature
from indexer.recorders.sample_window_kernels import sample_windows_feature
from indexer.recorders.stats_kernels import add_side, fold_feature, order_key
from indexer.recorders.topk_kernels import ranks_before, topk_insert, window_into


@njit(parallel=True, **NJIT_OPTIONS)
def nonzero_lists(acts, rows, poss, n_blocks):
    """Per feature, its non-zero tokens in token order: offsets [feat + 1] int64 and token
    indices [nnz] int32 (NaN counts as non-zero: the kernels skip it where they skip NaN; -0.0
    is a zero). Two passes over the batch, token-major, ``n_blocks`` token ranges in parallel."""
    n_feat = acts.shape[2]
    n = rows.shape[0]
    size = (n + n_blocks - 1) // n_blocks
    counts = np.zeros((n_blocks + 1, n_feat), np.int64)  # row t + 1: block t's non-zeros per feature
    for t in prange(n_blocks):
        for i in range(t * size, min(t * size + size, n)):
            row = acts[rows[i], poss[i]]
            for f in range(n_feat):  # vectorised
                counts[t + 1, f] += row[f] != 0
    offsets = np.zeros(n_feat + 1, np.int64)
    for f in range(n_feat):  # row t becomes block t's cursor in feature f: offsets[f] + the blocks before t
        run = offsets[f]
        for t in range(n_blocks):
            c = counts[t + 1, f]
            counts[t, f] = run
            run += c
        offsets[f + 1] = run
    tokens = np.empty(offsets[n_feat], np.int32)
    for t in prange(n_blocks):
        cursor = counts[t]
        for i in range(t * size, min(t * size + size, n)):
            row = acts[rows[i], poss[i]]
            for f in range(n_feat):
                if row[f] != 0:
                    tokens[cursor[f]] = i
                    cursor[f] += 1
    return offsets, tokens


@njit(**NJIT_OPTIONS)
def sparse_stats(f, x, idx, n, count, total, total_sq, lo, hi, n_active):
    """stats_kernels.stats_feature over feature f's non-zero tokens idx (values x[idx]) of n."""
    t1 = t2 = t3 = s1 = s2 = s3 = np.int64(0)
    n_nan = np.int64(0)
    act = np.int64(0)
    kmin = order_key(np.array([lo[f]]).view(np.int32)[0])
    kmax = order_key(np.array([hi[f]]).view(np.int32)[0])
    big = False
    for i in idx:
        d = np.float64(x[i])
        if not d == d:
            n_nan += 1
            continue
        if abs(d) < BOUND:
            a, b, c = split_nb(d)
            t1 += a
            t2 += b
            t3 += c
            a, b, c = split_nb(d * d)
            s1 += a
            s2 += b
            s3 += c
        else:
            big = True
        k = order_key(np.array([x[i]]).view(np.int32)[0])
        kmin = min(k, kmin)
        kmax = max(k, kmax)
        act += x[i] > 0
    if idx.shape[0] < n:  # a zero (+0.0, whose key is 0)
        kmin = min(np.int32(0), kmin)
        kmax = max(np.int32(0), kmax)
    fold_feature(f, t1, t2, t3, s1, s2, s3, act, n - n_nan, kmin, kmax, count, total, total_sq, lo, hi, n_active)
    if big:  # token order, as the dense kernel
        for i in idx:
            add_side(f, np.float64(x[i]), total, total_sq)


@njit(**NJIT_OPTIONS)
def sparse_topk(f, x, idx, rows, starts, ctx_ids, vals, ctxs, poss, wins, acts, before):
    """topk_kernels.topk_feature over feature f's non-zero tokens: each context's first max
    among them (a context without one has no entry); windows from x, zeros included."""
    k = vals.shape[1]
    j, m = 0, idx.shape[0]
    while j < m:
        b = rows[idx[j]]
        best = np.float32(-np.inf)
        best_i = -1
        while j < m and rows[idx[j]] == b:
            i = idx[j]
            if x[i] > best:
                best, best_i = x[i], i
            j += 1
        if best_i < 0:
            continue  # only NaN
        s = starts[b]
        if ranks_before(best, ctx_ids[b], vals[f, k - 1], ctxs[f, k - 1]):
            p = best_i - s + 1
            at = topk_insert(vals, ctxs, poss, wins, f, best, ctx_ids[b], np.int32(p))
            if at >= 0:
                window_into(wins, f, at, x, s, starts[b + 1] - s + 1, p, before, acts, b)


@njit(parallel=True, **NJIT_OPTIONS)
def sparse_fused_update(acts, lengths, ctx_ids, chunk, n_blocks, tk_vals, tk_ctxs, tk_poss,
                        seed, keys, counts, terms, per_bin, kval, kctx, kpos, kn, squeeze,
                        count, total, total_sq, lo, hi, n_active,
                        tk_wins, tk_before,
                        sw_refresh, sw_quantiles, sw_edges, sw_band_cap, sw_vals, sw_ctx, sw_pos, sw_free, sw_top):
    """fused.fused_update with skip_zeros, for a sparse batch: the same arguments, and the
    parallel token blocks of nonzero_lists. A zero (-0.0 too) reads as +0.0 everywhere."""
    n_feat = acts.shape[2]
    rows, poss, starts = batch_tokens(lengths)
    th = token_hashes(ctx_ids, starts, seed)
    n = rows.shape[0]
    offsets, tokens = nonzero_lists(acts, rows, poss, n_blocks)
    for c in prange((n_feat + chunk - 1) // chunk):
        x = np.zeros(n, np.float32)  # one feature's values over the batch, zeros included
        qb, hb, ins = np.empty(n, np.int32), np.empty(n, np.uint32), np.empty(n, np.int32)
        tbuf = np.empty(N_GROUPS, np.int64)
        for f in range(c * chunk, min(c * chunk + chunk, n_feat)):
            idx = tokens[offsets[f]:offsets[f + 1]]
            for i in idx:
                x[i] = acts[rows[i], poss[i], f]
            u = x.view(np.int32)
            sparse_stats(f, x, idx, n, count, total, total_sq, lo, hi, n_active)
            sparse_topk(f, x, idx, rows, starts, ctx_ids, tk_vals, tk_ctxs, tk_poss, tk_wins, acts, tk_before)
            n_ins = quantile_feature(f, x, u, th, rows, poss, ctx_ids, keys[f], seed, counts, terms, per_bin,
                                     kval, kctx, kpos, kn, squeeze, tbuf, qb, hb, ins, True)
            sample_windows_feature(f, x, qb, hb, ins[:n_ins], rows, poss, starts, ctx_ids, acts, tk_before,
                                   sw_refresh, counts, sw_quantiles, per_bin, seed, keys[f], sw_edges, sw_band_cap,
                                   sw_vals, sw_ctx, sw_pos, sw_free, sw_top)
            for i in idx:
                x[i] = 0
