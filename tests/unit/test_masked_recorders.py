"""Masked tokens: a NaN activation is a token the feature did not see (a mixture-of-experts
neuron on a token its expert was not routed, an SAE latent's zero where the site records only
firing tokens). Every recorder skips it: the counts, stats, top-k, kept set, bands and samples
equal brute force over each feature's seen tokens only, on both backends, fused or not, merged
or resumed. Loads no model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.brute_recorders import AFTER, BACKENDS, BEFORE, K, PER_BIN, QUANTILES, SALT, brute_boundary, make_batches, run, tokens
from indexer.recorders import N_FINE, FeatureRecorders, QuantileSampler, Stats, TopK
from indexer.recorders.finebins import fine_bins_np
from indexer.recorders.hashing import priority_np
from indexer.recorders.keep_rule import fine_thresholds_np

N_FEAT = 24


def masked_batches(n_batches=6, seed=3):
    """make_batches with NaN for about 60% of (token, feature) pairs, every token of feature 2,
    and feature 4 in all but one context (one token)."""
    rng = np.random.default_rng(seed)
    out = []
    for acts, lengths, ctx in make_batches(n_feat=N_FEAT, n_batches=n_batches):
        a = acts.clone()
        a[torch.from_numpy(rng.random(a.shape) < 0.6)] = float("nan")
        a[:, :, 2] = float("nan")
        a[:, :, 4] = float("nan")
        out.append((a, lengths, ctx))
    acts, lengths, _ = out[2]
    b = int(np.argmax(lengths.numpy()))
    acts[b, 1, 4] = 1.25
    return out


def seen(batches, f):
    """Feature f's seen tokens: values, ctx, pos."""
    vals, ctx, pos = tokens(batches)
    keep = ~np.isnan(vals[:, f])
    return vals[keep, f], ctx[keep], pos[keep]


def test_brute_force_over_seen_tokens_on_both_backends():
    batches = masked_batches()
    assert all(torch.isnan(a).any() for a, _, _ in batches)
    for backend in BACKENDS:
        top = run(lambda: TopK(N_FEAT, K, backend, before=BEFORE, after=AFTER), batches)
        stats = run(lambda: Stats(N_FEAT, backend), batches).summary()
        qs = run(lambda: QuantileSampler(N_FEAT, QUANTILES, PER_BIN, SALT, backend), batches)
        vals, ctxs, poss = top.result()
        bands, kept = qs.bands(), qs.kept()
        counts = qs._numpy("fine_counts")
        for f in range(N_FEAT):
            v, c, p = seen(batches, f)
            # stats
            assert stats["n_tokens"][f] == len(v)
            if len(v):
                assert stats["min"][f] == v.min() and stats["max"][f] == v.max()
                np.testing.assert_allclose(stats["mean"][f], v.astype(np.float64).mean(), rtol=1e-13, atol=1e-15)
                np.testing.assert_allclose(stats["std"][f], v.astype(np.float64).std(), rtol=1e-12, atol=1e-15)
                assert stats["frac_active"][f] == pytest.approx((v > 0).mean())
            else:
                assert np.isnan(stats["mean"][f]) or stats["n_tokens"][f] == 0
            # top-k: each context's first max among its seen tokens
            best = {}
            for x, cc, pp in zip(v, c, p):
                if cc not in best or x > best[cc][0]:
                    best[cc] = (x, pp)
            rows = sorted((-x, cc, pp) for cc, (x, pp) in best.items())[:K]
            assert (ctxs[f] >= 0).sum() == len(rows), (backend, f)
            for i, (nx, cc, pp) in enumerate(rows):
                assert (vals[f, i], ctxs[f, i], poss[f, i]) == (-nx, cc, pp), (backend, f, i)
            # fine counts and the kept set of the keep rule
            fine = fine_bins_np(v)
            want_counts = np.bincount(fine, minlength=N_FINE)
            np.testing.assert_array_equal(counts[f], want_counts)
            thr = fine_thresholds_np(want_counts[None], np.asarray(QUANTILES), PER_BIN, np.zeros(1, np.int64))[0]
            prio = priority_np(SALT, np.full(len(c), f), c, p) if len(c) else np.zeros(0, np.int64)
            keep = prio < thr[fine]
            want_kept = sorted(zip(prio[keep], c[keep], p[keep]))
            mine = kept["feature"] == f
            got_kept = list(zip(kept["prio"][mine], kept["ctx_id"][mine], kept["pos"][mine]))
            assert got_kept == want_kept, (backend, f)
            # bands: edges from the seen tokens, counts, bottom-k samples
            assert bands["counts"][f].sum() == len(v)
            if not len(v):
                assert bands["status"][f] == "dead"
                continue
            bounds = [brute_boundary(fine, q) for q in QUANTILES]
            assert bands["boundaries"][f].tolist() == bounds
            band = (fine[:, None] >= np.array(bounds)[None]).sum(axis=1)
            for q in range(len(QUANTILES) + 1):
                idx = np.flatnonzero(band == q)
                assert bands["counts"][f, q] == len(idx)
                want = sorted(zip(prio[idx], c[idx], p[idx]))[:PER_BIN]
                got = [(bands["prio"][f, q, i], bands["ctx_id"][f, q, i], bands["pos"][f, q, i])
                       for i in range(PER_BIN) if bands["ctx_id"][f, q, i] >= 0]
                assert got == want, (backend, f, q)
    assert stats["n_tokens"][2] == 0 and stats["n_tokens"][4] == 1


def results(rec: FeatureRecorders) -> dict[str, np.ndarray]:
    vals, ctxs, poss = rec.topk.result()
    out = {"topk.vals": vals, "topk.ctxs": ctxs, "topk.poss": poss, "topk.wins": rec.topk.windows()}
    out.update({f"stats.{k}": v for k, v in rec.stats.summary().items()})
    out.update({f"kept.{k}": v for k, v in rec.samples.kept().items()})
    out.update({f"bands.{k}": v for k, v in rec.samples.bands().items() if k != "status"})
    out["fine_counts"] = rec.samples._numpy("fine_counts")
    return out


def assert_same(a: FeatureRecorders, b: FeatureRecorders) -> None:
    ra, rb = results(a), results(b)
    for key in ra:
        np.testing.assert_array_equal(ra[key], rb[key], err_msg=key)  # NaN equals NaN here


def make(backend):
    return FeatureRecorders.create(N_FEAT, QUANTILES, K, PER_BIN, SALT, backend, window=(BEFORE, AFTER))


def test_fused_backends_merge_and_resume_agree(tmp_path):
    batches = masked_batches(n_batches=7)
    whole = run(lambda: make("numba"), batches)
    assert np.isnan(whole.topk.windows()).any()  # windows keep the unseen neighbours as NaN
    assert_same(whole, run(lambda: make("torch"), batches))
    for backend in BACKENDS:
        a, b = run(lambda: make(backend), batches[:3]), run(lambda: make(backend), batches[3:])
        a.merge(b)
        assert_same(a, whole)
        first = run(lambda: make(backend), batches[:2])
        np.savez(tmp_path / "s.npz", **first.state())
        with np.load(tmp_path / "s.npz", allow_pickle=False) as saved:
            resumed = FeatureRecorders.from_state(dict(saved), backend=backend)
        for batch in batches[2:]:
            resumed.update(*batch)
        assert_same(resumed, whole)


def test_skip_zeros_counts_zeros_in_stats_only():
    """A sparse site (skip_zeros): stats over every token, zeros included; fine counts, kept set,
    bands and top-k over the non-zero tokens only; the sparse numba kernel, the torch backend
    and a merge of both agree."""
    batches = make_batches(n_feat=N_FEAT, n_batches=5)  # values in -2..2 by quarters: many exact zeros
    batches[1][0][:, 2:, 7] = 0.0  # a feature silent in most contexts: fewer than K with a non-zero
    batches[2][0][0, 1, 9] = -0.0  # a negative zero is a zero

    def go(backend, part):
        rec = make(backend)
        for batch in part:
            rec.update(*batch, skip_zeros=True)
        return rec

    whole = go("numba", batches)
    assert_same(whole, go("torch", batches))
    a, b = go("numba", batches[:2]), go("torch", batches[2:])
    a.merge(b)
    assert_same(a, whole)
    vals, _, _ = tokens(batches)
    stats = whole.stats.summary()
    np.testing.assert_array_equal(stats["n_tokens"], len(vals))
    np.testing.assert_allclose(stats["mean"], vals.astype(np.float64).mean(0), rtol=1e-13, atol=1e-15)
    counts = whole.samples._numpy("fine_counts")
    for f in range(N_FEAT):
        nz = vals[:, f][vals[:, f] != 0]
        np.testing.assert_array_equal(counts[f], np.bincount(fine_bins_np(nz), minlength=N_FINE))
    assert (whole.samples.bands()["value"][whole.samples.bands()["ctx_id"] >= 0] != 0).all()
    np.testing.assert_array_equal(stats["min"], vals.min(0))
    np.testing.assert_array_equal(stats["max"], vals.max(0))
    # top-k: each context's first max among its non-zero tokens (zeros are never examples)
    vals_k, ctxs_k, poss_k = whole.topk.result()
    _, ctx, pos = tokens(batches)
    for f in range(N_FEAT):
        best = {}
        for x, c, p in zip(vals[:, f], ctx, pos):
            if x != 0 and (c not in best or x > best[c][0]):
                best[c] = (x, p)
        rows = sorted((-x, c, p) for c, (x, p) in best.items())[:K]
        got = [(-vals_k[f, i], ctxs_k[f, i], poss_k[f, i]) for i in range(K) if ctxs_k[f, i] >= 0]
        assert got == rows, f
    assert ((vals == 0).sum(0) > 0)[1:].all()  # not vacuous (feature 0 is the constant 0.5)
