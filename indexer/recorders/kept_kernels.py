"""Numba kernels that read the quantile sampler's pool of kept tokens at the end: the kept set
the rule defines (``canonical_*``, for states) and each band's sample (``band_samples``).

One feature per thread: its exact fine thresholds (keep_rule, no slack) into a local buffer,
then one walk over its few hundred entries, priorities recomputed from their coordinates.
numba's on-disk cache keys on this file only: touch it after changing keep_rule.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS
from indexer.recorders.finebins import fine_bin_nb
from indexer.recorders.hashing import priority_nb
from indexer.recorders.keep_rule import GROUP_BITS, N_GROUPS, bin_limit_nb, thresholds_nb


@njit(**NJIT_OPTIONS)
def fine_thresholds(f, counts, terms, per_bin, squeeze, gbuf, tbuf):
    """Feature f's exact fine thresholds (keep_rule.fine_thresholds_np) into tbuf [N_FINE]."""
    ck = terms[3, 0] * per_bin
    thresholds_nb(counts[f], terms[0], terms[1], terms[2], ck, np.int64(0), gbuf, 0)
    s = np.int64(squeeze[f])
    for j in range(tbuf.shape[0]):
        tbuf[j] = min(gbuf[j >> GROUP_BITS], bin_limit_nb(counts[f, j], ck, 0)) >> s


@njit(**NJIT_OPTIONS)
def _before(p1, c1, t1, p2, c2, t2):
    if p1 != p2:
        return p1 < p2
    if c1 != c2:
        return c1 < c2
    return t1 < t2


@njit(parallel=True, **NJIT_OPTIONS)
def canonical_counts(counts, terms, per_bin, squeeze, seed, keys, kval, kctx, kpos, kn, n_fine, keep):
    """keep bool [feat, P]: which entries the rule keeps; returns int64 [feat], how many."""
    n_feat = kn.shape[0]
    out = np.zeros(n_feat, np.int64)
    bits = kval.view(np.int32)
    for f in prange(n_feat):
        gbuf, tbuf = np.empty(N_GROUPS, np.int64), np.empty(n_fine, np.int64)
        fine_thresholds(f, counts, terms, per_bin, squeeze, gbuf, tbuf)
        for e in range(kn[f]):
            ok = priority_nb(seed, keys[f], kctx[f, e], kpos[f, e]) < tbuf[fine_bin_nb(bits[f, e])]
            keep[f, e] = ok
            out[f] += ok
    return out


@njit(parallel=True, **NJIT_OPTIONS)
def canonical_fill(seed, keys, kval, kctx, kpos, kn, keep, offsets, o_feat, o_prio, o_val, o_ctx, o_pos):
    """The kept entries of every feature, sorted by (priority, ctx_id, pos), at offsets[f]."""
    for f in prange(kn.shape[0]):
        at = offsets[f]
        for e in range(kn[f]):
            if not keep[f, e]:
                continue
            p, c, t = priority_nb(seed, keys[f], kctx[f, e], kpos[f, e]), kctx[f, e], np.int64(kpos[f, e])
            i = at
            while i > offsets[f] and _before(p, c, t, o_prio[i - 1], o_ctx[i - 1], o_pos[i - 1]):
                o_prio[i], o_val[i], o_ctx[i], o_pos[i] = o_prio[i - 1], o_val[i - 1], o_ctx[i - 1], o_pos[i - 1]
                i -= 1
            o_prio[i], o_val[i], o_ctx[i], o_pos[i] = p, kval[f, e], c, t
            at += 1
        o_feat[offsets[f]:at] = f


@njit(parallel=True, **NJIT_OPTIONS)
def band_samples(counts, terms, per_bin, squeeze, seed, keys, kval, kctx, kpos, kn, n_fine, bounds,
                 out_prio, out_val, out_ctx, out_pos):
    """Per feature and band (fine bins bounds[f, i-1] .. bounds[f, i]), the per_bin smallest
    (priority, ctx, pos) among its kept tokens under the band's smallest fine threshold, into
    out_* [feat, bands, per_bin] (prefilled empty)."""
    n_bounds = bounds.shape[1]
    bits = kval.view(np.int32)
    for f in prange(kn.shape[0]):
        gbuf, tbuf = np.empty(N_GROUPS, np.int64), np.empty(n_fine, np.int64)
        fine_thresholds(f, counts, terms, per_bin, squeeze, gbuf, tbuf)
        band_thr = np.empty(n_bounds + 1, np.int64)
        lo = 0
        for b in range(n_bounds + 1):
            hi = bounds[f, b] if b < n_bounds else n_fine
            m = np.int64(1) << 62
            for j in range(lo, max(lo, hi)):
                m = min(m, tbuf[j])
            band_thr[b] = m
            lo = max(lo, hi)
        for e in range(kn[f]):
            q = fine_bin_nb(bits[f, e])
            c, t = kctx[f, e], np.int64(kpos[f, e])
            p = priority_nb(seed, keys[f], c, t)
            if p >= tbuf[q]:
                continue
            b = 0
            while b < n_bounds and bounds[f, b] <= q:
                b += 1
            if p >= band_thr[b]:
                continue
            last = out_prio.shape[2] - 1
            if not _before(p, c, t, out_prio[f, b, last], out_ctx[f, b, last], out_pos[f, b, last]):
                continue
            i = last
            while i > 0 and _before(p, c, t, out_prio[f, b, i - 1], out_ctx[f, b, i - 1], out_pos[f, b, i - 1]):
                out_prio[f, b, i], out_val[f, b, i] = out_prio[f, b, i - 1], out_val[f, b, i - 1]
                out_ctx[f, b, i], out_pos[f, b, i] = out_ctx[f, b, i - 1], out_pos[f, b, i - 1]
                i -= 1
            out_prio[f, b, i], out_val[f, b, i], out_ctx[f, b, i], out_pos[f, b, i] = p, kval[f, e], c, t
