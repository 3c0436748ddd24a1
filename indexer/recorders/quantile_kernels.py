"""Numba kernels for QuantileSampler. Feature-major (feature_major.py): thread i owns
features [f0, f0 + n) and walks one feature at a time over the batch's tokens.

Per feature and batch: the group thresholds of the keep rule (keep_rule.py) from the counts
so far, into a thread-local buffer. Per token: the fine bin from the value's bits, the
priority hash, a count, and one compare of the hash against its group's threshold; only
tokens under it (rare once the stream is long) check their fine bin's own limit and enter
the feature's pool of kept tokens, unordered. A full pool is compacted: thresholds from the
counts so far, entries above them dropped; a pool still three-quarters full after that
squeezes the feature (halves its thresholds, kept in ``squeeze``), which the rule does only
for pools far beyond their expected size.

numba's on-disk cache keys on this file only: after changing the grid in finebins.py or
the rule in keep_rule.py, touch this file (and fused.py) so the kernels recompile.
Grid: 64 sub-bins per octave, 2**-10..2**10; thresholds per 8 fine bins.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.feature_major import TILE, batch_tokens, token_hashes, transpose_tile
from indexer.recorders.finebins import fine_bin_nb
from indexer.recorders.hashing import fmix32_nb, priority_nb
from indexer.recorders.keep_rule import GROUP_BITS, N_GROUPS, bin_limit_nb, thresholds_nb


@njit(parallel=True, **NJIT_OPTIONS)
def quantile_update(acts, lengths, ctx_ids, chunk, seed, keys, counts, terms, per_bin,
                    kval, kctx, kpos, kn, squeeze, skip_zeros):
    """acts float32 [batch, pos, feat]; counts [feat, N_FINE]; the pool k* [feat, P], kn, squeeze [feat]."""
    n_feat = acts.shape[2]
    rows, tposs, starts = batch_tokens(lengths)
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
            transpose_tile(bits, rows, tposs, f0, m, buf)
            for j in range(m):
                quantile_feature(f0 + j, buf[j].view(np.float32), buf[j], th, rows, tposs, ctx_ids, keys[f0 + j],
                                 seed, counts, terms, per_bin, kval, kctx, kpos, kn, squeeze, tbuf, qb, hb, ins,
                                 skip_zeros)


@njit(**NJIT_OPTIONS)
def _thresholds(f, counts, terms, per_bin, squeeze, tbuf):
    thresholds_nb(counts[f], terms[0], terms[1], terms[2], terms[3, 0] * per_bin, np.int64(squeeze[f]), tbuf)


@njit(**NJIT_OPTIONS)
def compact(f, seed, key, counts, terms, per_bin, kval, kctx, kpos, kn, squeeze, tbuf):
    """Drop feature f's entries above the thresholds of its counts so far (priorities
    recomputed from the tokens' coordinates); squeeze while the pool stays more than
    three-quarters full. Leaves tbuf holding the thresholds used."""
    ck = terms[3, 0] * per_bin
    bits = kval.view(np.int32)
    while True:
        _thresholds(f, counts, terms, per_bin, squeeze, tbuf)
        m = 0
        for e in range(kn[f]):
            q = fine_bin_nb(bits[f, e])
            limit = min(tbuf[q >> GROUP_BITS], bin_limit_nb(counts[f, q], ck) >> squeeze[f])
            c = kctx[f, e]
            prio = priority_nb(seed, key, c, kpos[f, e])
            if prio < limit:
                kval[f, m], kctx[f, m], kpos[f, m] = kval[f, e], c, kpos[f, e]
                m += 1
        kn[f] = m
        if 4 * m <= 3 * kval.shape[1]:
            return
        squeeze[f] += 1


@njit(**NJIT_OPTIONS)
def quantile_feature(f, x, u, th, rows, poss, ctx_ids, key, seed, counts, terms, per_bin,
                     kval, kctx, kpos, kn, squeeze, tbuf, qb, hb, ins, skip_zeros=False):
    """Feature-major: fold feature f's values x float32 [n] (u: their bits; th: the tokens'
    hashes; token i is (ctx_ids[rows[i]], poss[i]); NaN values are skipped, and zeros too with
    ``skip_zeros``: a sparse site's zero mass is counted by Stats, not binned or sampled, and
    costs a compare). Returns how many tokens entered the pool; ins[:that] lists them in token order (only those can be samples whose window the
    sample-window pool captures)."""
    n = x.shape[0]
    if not skip_zeros:  # dense: every token's bin and priority, vectorised
        for i in range(n):
            qb[i] = fine_bin_nb(u[i])
            hb[i] = fmix32_nb(np.uint32(th[i] ^ key))
    _thresholds(f, counts, terms, per_bin, squeeze, tbuf)
    ck = terms[3, 0] * per_bin
    cf = counts[f]
    size = kval.shape[1]
    n_ins = 0
    for i in range(n):
        if not x[i] == x[i] or (skip_zeros and x[i] == 0):
            continue  # NaN: a token the feature did not see (common.py); a zero of a sparse site
        if skip_zeros:  # sparse: only the firing tokens' bins and priorities
            qb[i] = fine_bin_nb(u[i])
            hb[i] = fmix32_nb(np.uint32(th[i] ^ key))
        q = qb[i]
        cf[q] += 1
        h = np.int64(hb[i])
        if h < tbuf[q >> GROUP_BITS] and h < (bin_limit_nb(cf[q], ck) >> squeeze[f]):
            if kn[f] == size:
                compact(f, seed, key, counts, terms, per_bin, kval, kctx, kpos, kn, squeeze, tbuf)
                if not (h < tbuf[q >> GROUP_BITS] and h < (bin_limit_nb(cf[q], ck) >> squeeze[f])):
                    continue
            e = kn[f]
            kval[f, e], kctx[f, e], kpos[f, e] = x[i], ctx_ids[rows[i]], poss[i]
            kn[f] = e + 1
            ins[n_ins] = i
            n_ins += 1
    return n_ins
