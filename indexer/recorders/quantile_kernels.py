"""Numba kernels for QuantileSampler. Feature-major (feature_major.py): thread i owns
features [f0, f0 + n) and walks one feature at a time over the batch's tokens.

Per token: the fine bin from the value's bits and the priority hash (a vectorised pass),
then a count and one compare of the hash against the bin's cached threshold (`thr`, 4 bytes
per bin: one feature's thresholds stay in L1/L2). Only tokens under it, rare once a bin is
full, meet the sorted per-bin list. Slots are sorted by (priority, ctx_id, pos) ascending.

numba's on-disk cache keys on this file only: after changing the grid in finebins.py, touch
this file (and fused.py) so the kernels recompile. Grid: 64 sub-bins per octave, 2**-10..2**10.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.finebins import fine_bin_nb
from indexer.recorders.feature_major import TILE, batch_tokens, token_hashes, transpose_tile
from indexer.recorders.hashing import fmix32_nb


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


@njit(parallel=True, **NJIT_OPTIONS)
def quantile_update(acts, lengths, ctx_ids, chunk, seed, keys, counts, thr, prio, vals, ctxs, poss):
    """acts float32 [batch, pos, feat]; counts, thr [feat, N_FINE]; samples [feat, N_FINE, per_bin]."""
    n_feat = acts.shape[2]
    rows, tposs, starts = batch_tokens(lengths)
    th = token_hashes(ctx_ids, starts, seed)
    n = rows.shape[0]
    bits = acts.view(np.int32)
    for c in prange((n_feat + chunk - 1) // chunk):
        f1c = min(c * chunk + chunk, n_feat)
        buf = np.empty((TILE, n), np.int32)
        qb, hb, ins = np.empty(n, np.int32), np.empty(n, np.uint32), np.empty(n, np.int32)
        for f0 in range(c * chunk, f1c, TILE):
            m = min(TILE, f1c - f0)
            transpose_tile(bits, rows, tposs, f0, m, buf)
            for j in range(m):
                quantile_feature(f0 + j, buf[j].view(np.float32), buf[j], th, rows, tposs, ctx_ids,
                                 keys[f0 + j], counts, thr, prio, vals, ctxs, poss, qb, hb, ins)


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


@njit(**NJIT_OPTIONS)
def threshold_of(p):
    """A fine bin's admission threshold (uint32) from its last slot's priority."""
    return np.uint32(min(p, np.int64(0xFFFFFFFF)))


@njit(**NJIT_OPTIONS)
def quantile_feature(f, x, u, th, rows, poss, ctx_ids, key, counts, thr, prio, vals, ctxs, s_poss, qb, hb, ins):
    """Feature-major: fold feature f's values x float32 [n] (u: their bits; th: the tokens'
    hashes; token i is (ctx_ids[rows[i]], poss[i])). thr[f, q] caches threshold_of the
    bin's last priority, so the common case reads 4 bytes per bin of one feature (L1/L2).
    Returns how many tokens entered a bin's slots; ins[:that] lists them in token order (only
    those can be samples whose window the pool captures)."""
    n = x.shape[0]
    last = prio.shape[2] - 1
    for i in range(n):  # vectorised
        qb[i] = fine_bin_nb(u[i])
        hb[i] = fmix32_nb(np.uint32(th[i] ^ key))
    cf = counts[f]
    tf = thr[f]
    n_ins = 0
    for i in range(n):
        q = qb[i]
        cf[q] += 1
        if hb[i] <= tf[q]:
            if sample_insert(prio, vals, ctxs, s_poss, f, q, np.int64(hb[i]), x[i],
                             ctx_ids[rows[i]], poss[i]) >= 0:
                tf[q] = threshold_of(prio[f, q, last])
                ins[n_ins] = i
                n_ins += 1
    return n_ins


@njit(parallel=True, **NJIT_OPTIONS)
def thresholds(prio, thr):
    """thr[f, q] = threshold_of(prio[f, q, last]) for every bin."""
    last = prio.shape[2] - 1
    for f in prange(prio.shape[0]):
        for q in range(prio.shape[1]):
            thr[f, q] = threshold_of(prio[f, q, last])
