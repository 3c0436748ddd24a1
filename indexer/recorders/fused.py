"""The fused numba kernel: TopK, QuantileSampler and Stats rows in one pass over a batch.

One kernel (one parallel region) walks the activations once, running the three recorders'
row functions on each row chunk; the results are identical to updating the three recorders
one after another (which the torch backend does). The work is compute-bound, so on a CPU
this saves the extra passes and thread wake-ups, not arithmetic. (Fine grid: 64 sub-bins per
octave; see quantile_kernels.py on numba's cache.)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.hashing import context_hash_nb, token_hash_nb
from indexer.recorders.quantile_kernels import quantile_begin, quantile_row
from indexer.recorders.stats_kernels import stats_row, stats_views
from indexer.recorders.topk_kernels import topk_begin, topk_end, topk_row

@njit(parallel=True, **NJIT_OPTIONS)
def fused_update(acts, lengths, ctx_ids, chunk, tk_vals, tk_ctxs, tk_poss,
                 seed, keys, counts, prio, s_vals, s_ctxs, s_poss,
                 total, total_sq, lo, hi, n_active, hist):
    """acts float32 [batch, pos, feat]; the three recorders' arrays, updated in place."""
    n_batch, _, n_feat = acts.shape
    bits = acts.view(np.int32)
    for c in prange((n_feat + chunk - 1) // chunk):
        f0 = c * chunk
        n = min(chunk, n_feat - f0)
        f1 = f0 + n
        best = np.empty(n, np.float32)
        best_pos = np.empty(n, np.int32)
        scratch = np.empty(n, np.int32)
        k, bins, hashes = quantile_begin(f0, n, keys)
        tv, sv, lv, hv, av, histv = stats_views(f0, n, total, total_sq, lo, hi, n_active, hist)
        for b in range(n_batch):
            if lengths[b] <= 1:
                continue
            topk_begin(best, best_pos)
            ch = context_hash_nb(seed, ctx_ids[b])
            for t in range(1, lengths[b]):
                x, u = acts[b, t, f0:f1], bits[b, t, f0:f1]
                topk_row(x, t, best, best_pos)
                stats_row(x, u, tv, sv, lv, hv, av, histv, scratch)
                quantile_row(x, u, t, f0, ctx_ids[b], token_hash_nb(ch, t), k, bins, hashes,
                             counts, prio, s_vals, s_ctxs, s_poss)
            topk_end(f0, n, ctx_ids[b], best, best_pos, tk_vals, tk_ctxs, tk_poss)
