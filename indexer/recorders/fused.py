"""The fused numba kernel: TopK, QuantileSampler and Stats in one pass over a batch.

One kernel (one parallel region) transposes each tile of features once (feature_major.py)
and runs the three recorders' per-feature functions on every feature of it; the results
are identical to updating the three recorders one after another (which the torch backend
does). (Fine grid: 64 sub-bins per octave; see quantile_kernels.py on numba's cache.)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.feature_major import TILE, batch_tokens, token_hashes, transpose_tile
from indexer.recorders.keep_rule import N_GROUPS
from indexer.recorders.quantile_kernels import quantile_feature
from indexer.recorders.sample_window_kernels import sample_windows_feature
from indexer.recorders.stats_kernels import stats_feature
from indexer.recorders.topk_kernels import topk_feature


@njit(parallel=True, **NJIT_OPTIONS)
def fused_update(acts, lengths, ctx_ids, chunk, tk_vals, tk_ctxs, tk_poss,
                 seed, keys, counts, terms, per_bin, kval, kctx, kpos, kn, squeeze,
                 count, total, total_sq, lo, hi, n_active,
                 tk_wins, tk_before,
                 sw_refresh, sw_quantiles, sw_edges, sw_band_cap, sw_vals, sw_ctx, sw_pos, sw_free, sw_top):
    """acts float32 [batch, pos, feat]; the three recorders' arrays, updated in place. (A sparse
    site, whose zeros are counted by Stats only: sparse_kernels.sparse_fused_update.)"""
    n_feat = acts.shape[2]
    rows, poss, starts = batch_tokens(lengths)
    th = token_hashes(ctx_ids, starts, seed)
    n = rows.shape[0]
    bits = acts.view(np.int32)
    for c in prange((n_feat + chunk - 1) // chunk):
        f1c = min(c * chunk + chunk, n_feat)
        buf = np.empty((TILE, n), np.int32)
        qb, hb, ins = np.empty(n, np.int32), np.empty(n, np.uint32), np.empty(n, np.int32)
        tbuf = np.empty(N_GROUPS, np.int64)
        for f0 in range(c * chunk, f1c, TILE):
            m = min(TILE, f1c - f0)
            transpose_tile(bits, rows, poss, f0, m, buf)
            for j in range(m):
                f = f0 + j
                u = buf[j]
                x = u.view(np.float32)
                topk_feature(f, x, starts, ctx_ids, tk_vals, tk_ctxs, tk_poss, tk_wins, acts, tk_before)
                stats_feature(f, x, u, count, total, total_sq, lo, hi, n_active)
                n_ins = quantile_feature(f, x, u, th, rows, poss, ctx_ids, keys[f], seed, counts, terms, per_bin,
                                         kval, kctx, kpos, kn, squeeze, tbuf, qb, hb, ins)
                sample_windows_feature(f, x, qb, hb, ins[:n_ins], rows, poss, starts, ctx_ids, acts, tk_before,
                                       sw_refresh, counts, sw_quantiles, per_bin, seed, keys[f], sw_edges,
                                       sw_band_cap, sw_vals, sw_ctx, sw_pos, sw_free, sw_top)

