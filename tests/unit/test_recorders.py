"""Recorders against plain brute force (sort everything), on both backends. Loads no model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexer.recorders import (
    N_BINS,
    N_FINE,
    FeatureRecorders,
    QuantileSampler,
    RecorderError,
    Stats,
    TopK,
    hist_edges,
)
from indexer.recorders.finebins import ZERO, choose_boundaries, fine_bins_np, lower_edges, magnitudes
from indexer.recorders.hashing import feature_keys, priority_np, priority_t, seed_of, token_hash_t
from indexer.recorders.common import MAX_CONTEXTS, SHORT_CONTEXT

from helpers.brute_recorders import (
    AFTER, BACKENDS, BEFORE, K, PER_BIN, QUANTILES, SALT, brute_boundary, brute_hist_bin, brute_kept, brute_quantiles,
    assert_same, brute_topk, brute_windows, edges_for, make_batches, makers, run, tokens,
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_matches_brute_force(backend):
    batches = make_batches()
    rec = run(lambda: TopK(24, K, backend, before=BEFORE, after=AFTER), batches)
    want = brute_topk(batches, K)
    for a, b in zip(rec.result(), want):
        np.testing.assert_array_equal(a, b)
    assert rec.windows().shape == (24, K, BEFORE + AFTER + 1)
    np.testing.assert_array_equal(rec.windows(), brute_windows(batches, want[1], want[2], BEFORE, AFTER))
    assert (rec.windows()[:, :, 0] != 0).any()  # not vacuous: windows hold values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_feat", [24, 150])
def test_quantiles_match_brute_force(backend, n_feat):
    batches = make_batches(n_feat=n_feat, n_batches=4)
    rec = run(lambda: QuantileSampler(n_feat, QUANTILES, PER_BIN, SALT, backend), batches)
    fine_counts, kept_want = brute_kept(batches, PER_BIN, SALT)
    np.testing.assert_array_equal(rec._numpy("fine_counts"), fine_counts)
    kept = rec.kept()
    np.testing.assert_array_equal(np.stack([kept[k] for k in ("feature", "prio", "ctx_id", "pos")], 1), kept_want)
    counts, want, bounds = brute_quantiles(batches, QUANTILES, PER_BIN, SALT)
    bands = rec.bands()
    np.testing.assert_array_equal(bands["boundaries"], bounds)
    np.testing.assert_array_equal(rec.counts(), counts)
    edges = rec.edges
    s = rec.samples()
    np.testing.assert_array_equal(s["prio"], np.where(want[..., 0] < 0, 2**32, want[..., 0]))
    np.testing.assert_array_equal(s["ctx_id"], want[..., 1])
    np.testing.assert_array_equal(s["pos"], want[..., 2])
    np.testing.assert_array_equal((s["ctx_id"] >= 0).sum(axis=2), np.minimum(counts, PER_BIN))
    lookup = {(int(c), int(p)): v for v, c, p in zip(*tokens(batches))}
    for f, q, i in zip(*np.nonzero(s["ctx_id"] >= 0)):
        value = lookup[int(s["ctx_id"][f, q, i]), int(s["pos"][f, q, i])][f]
        assert s["value"][f, q, i] == value
        assert int((value >= edges[f]).sum()) == q


@pytest.mark.parametrize("backend", BACKENDS)
def test_stats_match_brute_force(backend):
    batches = make_batches()
    batches[0][0][:, ::3, 3] = 300.0  # beyond the histogram's range
    batches[1][0][:, ::2, 5] = -1e-5  # inside the zero bin
    summary = run(lambda: Stats(24, backend), batches).summary()
    vals, _, _ = tokens(batches)
    np.testing.assert_array_equal(summary["n_tokens"], len(vals))
    np.testing.assert_array_equal(summary["min"], vals.min(0))
    np.testing.assert_array_equal(summary["max"], vals.max(0))
    np.testing.assert_allclose(summary["frac_active"], (vals > 0).mean(0))
    np.testing.assert_allclose(summary["mean"], vals.astype(np.float64).mean(0), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(summary["std"], vals.astype(np.float64).std(0), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_histogram_from_fine_counts_matches_brute_force(backend):
    """The histogram is summed from the sampler's fine counts: it must equal binning every
    token by the histogram's own edges."""
    batches = make_batches()
    batches[0][0][:, ::3, 3] = 300.0  # beyond the histogram's range
    batches[1][0][:, ::2, 5] = -1e-5  # inside the zero bin
    hist = run(lambda: QuantileSampler(24, QUANTILES, PER_BIN, SALT, backend), batches).histogram()
    vals, _, _ = tokens(batches)
    want = np.zeros((24, N_BINS), np.int64)
    for row in vals:
        for f, x in enumerate(row):
            want[f, brute_hist_bin(x)] += 1
    np.testing.assert_array_equal(hist, want)


def test_hist_bins_match_edges():
    x = np.concatenate([hist_edges(), hist_edges() * 1.0001, [0.0, -0.0, 1e-9, -1e-9, 1e6, -np.inf, np.inf]])
    x = x.astype(np.float32)
    rec = QuantileSampler(len(x), (0.5,), 1, 0, "numba")
    rec.update(torch.from_numpy(np.stack([x, x]))[None], torch.tensor([2]), torch.tensor([0]))
    assert [int(np.argmax(h)) for h in rec.histogram()] == [brute_hist_bin(v) for v in x]


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_equals_single_run(backend):
    batches = make_batches(n_batches=7)
    for make in makers(backend, edges_for(batches)):
        whole = run(make, batches)
        a, b = run(make, batches[:3]), run(make, batches[3:])
        a.merge(b)
        assert_same(a, whole)
        if isinstance(whole, TopK):  # the same contexts twice are kept once
            again = run(make, batches)
            again.merge(whole)
            assert_same(again, whole)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("resume_backend", BACKENDS)
def test_state_round_trip_continues_identically(backend, resume_backend, tmp_path):
    batches = make_batches(n_batches=5)
    for i, make in enumerate(makers(backend, edges_for(batches))):
        whole = run(make, batches)
        first = run(make, batches[:2])
        np.savez(tmp_path / f"{i}.npz", **first.state())
        with np.load(tmp_path / f"{i}.npz", allow_pickle=False) as saved:
            resumed = type(first).from_state(dict(saved), backend=resume_backend)
        for batch in batches[2:]:
            resumed.update(*batch)
        assert_same(resumed, whole)


@pytest.mark.parametrize("backend", BACKENDS)
def test_positions_are_int16_up_to_short_contexts_and_int32_past_them(backend):
    batches = make_batches(n_batches=5)

    def make(max_len):
        return lambda: FeatureRecorders.create(24, QUANTILES, K, PER_BIN, SALT, backend, window=(BEFORE, AFTER),
                                               max_len=max_len)

    short, long = run(make(SHORT_CONTEXT), batches), run(make(SHORT_CONTEXT + 1), batches)
    parts = ((short.topk, long.topk, "poss"), (short.samples, long.samples, "kpos"), (short.windows, long.windows, "pos"))
    for a, b, name in parts:
        assert (a._numpy(name).dtype, b._numpy(name).dtype) == (np.int16, np.int32)
    assert_same(short, long)
    for name in ("vals", "ctx", "pos"):  # the same windows captured
        np.testing.assert_array_equal(short.windows._numpy(name), long.windows._numpy(name))
    assert long.nbytes() - short.nbytes() == 24 * 2 * (K + short.samples.capacity + short.windows.pool)
    # a state written before max_len was kept held int32 positions: it loads as one
    old = {k: v for k, v in short.state().items() if not k.endswith("/max_len")}
    assert_same(FeatureRecorders.from_state(old, backend), long)
    with pytest.raises(RecorderError, match="max_len"):
        run(make(8), batches)  # contexts of 12 tokens
    # the longest short context: its last positions fit int16
    acts = torch.linspace(-1, 1, SHORT_CONTEXT * 2).reshape(1, SHORT_CONTEXT, 2)
    one = [(acts, torch.tensor([SHORT_CONTEXT]), torch.tensor([3]))]
    at_most, past = (run(lambda: FeatureRecorders.create(2, QUANTILES, K, PER_BIN, SALT, backend, window=(BEFORE, AFTER),
                                                          max_len=n), one) for n in (SHORT_CONTEXT, SHORT_CONTEXT + 1))
    assert at_most.topk.result()[2][0, 0] == SHORT_CONTEXT - 1
    assert at_most.samples.kept()["pos"].max() > SHORT_CONTEXT - 100
    assert_same(at_most, past)


def test_backends_agree_and_fused_equals_separate():
    batches = make_batches(n_batches=5)
    shift = MAX_CONTEXTS - 1 - max(int(c.max()) for _, _, c in batches)  # up to the largest id the state holds
    batches = [(a, l, (c + shift).flip(0)) for a, l, c in batches]  # ids need not increase
    edges = edges_for(batches)
    numba_runs = [run(m, batches) for m in makers("numba", edges)]
    torch_runs = [run(m, batches) for m in makers("torch", edges)]
    for a, b in zip(numba_runs, torch_runs):
        assert_same(a, b)
    fused = numba_runs[3]
    for part, separate in zip((fused.topk, fused.samples, fused.stats), numba_runs[:3]):
        assert_same(part, separate)


def test_a_ctx_id_past_int32_is_refused():
    acts, lengths, ctx = make_batches(n_batches=1)[0]
    rec = QuantileSampler(acts.shape[-1])
    with pytest.raises(RecorderError, match="at most 2147483648 contexts"):
        rec.update(acts, lengths, ctx + MAX_CONTEXTS)


def test_priority_is_a_uniform_pure_function():
    ctx = np.repeat(np.arange(2000, dtype=np.int64) * 1_000_003, 50)
    pos = np.tile(np.arange(1, 51), 2000)
    feat = np.arange(len(ctx)) % 3
    prio = priority_np(SALT, feat, ctx, pos)
    expected = len(prio) / 64
    for shift in (26, 13, 0):  # top, middle and low bits
        buckets = np.bincount((prio >> shift) & 63, minlength=64)
        chi2 = ((buckets - expected) ** 2 / expected).sum()
        assert chi2 < 120, (shift, chi2)  # 63 dof: mean 63, p(> 120) ~ 1e-5
    keys = torch.from_numpy(feature_keys(3).astype(np.int64))
    t = priority_t(token_hash_t(seed_of(SALT), torch.from_numpy(ctx), torch.from_numpy(pos)), keys)
    np.testing.assert_array_equal(t[np.arange(len(ctx)), feat].numpy(), prio)
    assert not np.array_equal(priority_np(SALT + 1, feat, ctx, pos), prio)


def test_fine_bins_match_lower_edges():
    m = magnitudes().astype(np.float32)
    x = np.concatenate([m, -m, np.nextafter(m, np.float32(0)), np.nextafter(-m, np.float32(0)), m * 1.01, -m * 0.99,
                        [0.0, -0.0, 1e-9, -1e-9, 1e6, -1e6, np.inf, -np.inf]]).astype(np.float32)
    bins = fine_bins_np(x)
    e = lower_edges()
    by_edges = (x[:, None] >= e[None, :]).sum(axis=1) - 1  # x >= e_j exactly when bin(x) >= j
    np.testing.assert_array_equal(bins, by_edges)
    assert (np.diff(e) > 0).all() and fine_bins_np(np.float32([0.0, -0.0]))[0] == ZERO
    t = torch.from_numpy(x)
    from indexer.recorders.finebins import fine_bins_t
    np.testing.assert_array_equal(fine_bins_t(t).numpy(), bins)
    rec = QuantileSampler(len(x), (0.5,), 1, 0, "numba")
    rec.update(torch.from_numpy(np.stack([x, x]))[None], torch.tensor([2]), torch.tensor([0]))
    np.testing.assert_array_equal(rec._numpy("fine_counts").argmax(axis=1), bins)


def test_boundaries_are_the_nearest_fine_quantiles():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1, 5000), rng.exponential(3, 200)]).astype(np.float32)
    fine = fine_bins_np(values)
    q = np.array([0.25, 0.5, 0.9, 0.99, 0.999])
    counts = np.bincount(fine, minlength=N_FINE)[None]
    got = choose_boundaries(counts, q)[0]
    assert got.tolist() == [brute_boundary(fine, x) for x in q]
    share = np.array([(fine < j).mean() for j in got])
    assert np.all(np.abs(share - q) < 0.01)  # 64 bins per octave: edges land close
    constant = choose_boundaries(np.eye(1, N_FINE, ZERO + 5, dtype=np.int64) * 7, q)
    assert set(constant[0].tolist()) <= {ZERO + 5, ZERO + 6}


def test_band_samples_are_uniform():
    """Fixed seeds: a band made of fine bins of unequal mass must draw from each fine bin in
    proportion to its tokens (chi-square over many salts), and from no other band."""
    rng = np.random.default_rng(11)
    # one feature: 3 fine bins of masses 1000, 300, 100 in the top band (value >= 2), the rest below
    values = np.concatenate([rng.uniform(0.1, 1.5, 4600), np.full(1000, 2.0), np.full(300, 2.2), np.full(100, 3.0)])
    values = rng.permutation(values).astype(np.float32)
    acts = torch.from_numpy(values.reshape(60, 100, 1))
    lengths, ctx = torch.full((60,), 100), torch.arange(60)
    recorded = values.reshape(60, 100)[:, 1:]  # BOS rows (pos 0) are not recorded
    top = int((recorded >= 2).sum())
    picks = np.zeros(3, np.int64)
    for salt in range(200):
        rec = QuantileSampler(1, (0.5, 1 - top / recorded.size), 4, salt, "numba")
        rec.update(acts, lengths, ctx)
        bands = rec.bands()
        assert bands["counts"][0, 2] == top
        v = bands["value"][0, 2]
        picks += [(v == 2.0).sum(), (v == np.float32(2.2)).sum(), (v == 3.0).sum()]
        assert (v >= 2.0).all()
    mass = np.array([(recorded == x).sum() for x in (2.0, np.float32(2.2), 3.0)])
    expected = picks.sum() * mass / mass.sum()
    chi2 = ((picks - expected) ** 2 / expected).sum()
    assert chi2 < 13.8, (picks, expected)  # 2 dof: p(> 13.8) = 0.001


def test_planted_sparse_feature_gets_upper_bins():
    """A feature that is 0 everywhere but fires on a handful of tokens late in the stream."""
    acts = torch.zeros(40, 64, 2)
    acts[:, :, 1] = torch.linspace(-1, 1, 40 * 64).view(40, 64)  # a dense companion
    acts[37, 5, 0], acts[38, 9, 0], acts[39, 3, 0] = 4.0, 5.0, 6.0
    for backend in BACKENDS:
        rec = QuantileSampler(2, (0.5, 0.9, 0.99, 0.999), 3, 1, backend)
        for b in range(0, 40, 8):
            rec.update(acts[b:b + 8], torch.full((8,), 64), torch.arange(b, b + 8))
        bands = rec.bands()
        assert bands["counts"][0, -1] == 3 and sorted(bands["value"][0, -1].tolist()) == [4.0, 5.0, 6.0]
        assert bands["status"].tolist() == ["near_constant", "ok"]
        assert 0 < bands["edges"][0, -1] <= 4.0
        np.testing.assert_allclose(bands["shares"][1][:3], [0.5, 0.4, 0.09], rtol=0.1)  # 2,520 tokens only


def test_bad_inputs_raise_recorder_error():
    rec = TopK(4, 2)
    with pytest.raises(RecorderError, match="acts shape"):
        rec.update(torch.zeros(2, 3, 5), torch.tensor([3, 3]), torch.tensor([0, 1]))
    with pytest.raises(RecorderError, match="lengths"):
        rec.update(torch.zeros(2, 3, 4), torch.tensor([3, 4]), torch.tensor([0, 1]))
    with pytest.raises(RecorderError, match="k differs"):
        rec.merge(TopK(4, 3))
    with pytest.raises(RecorderError, match="kind"):
        Stats.from_state(rec.state())


def test_torch_backend_in_small_steps(monkeypatch):
    import indexer.recorders.quantiles_torch as quantiles_torch
    import indexer.recorders.stats as stats

    monkeypatch.setattr(quantiles_torch, "ELEMENTS_PER_STEP", 24 * 7)
    monkeypatch.setattr(stats, "ROWS_PER_STEP", 24 * 5)
    batches = make_batches(n_batches=3)
    edges = edges_for(batches)
    for make_torch, make_numba in zip(makers("torch", edges)[1:], makers("numba", edges)[1:]):
        assert_same(run(make_torch, batches), run(make_numba, batches))
    pool = run(makers("torch", edges)[3], batches).windows  # captured over several steps a batch: true windows
    ctx, pos = pool._numpy("ctx"), pool._numpy("pos")
    assert (ctx >= 0).sum() > 24
    np.testing.assert_array_equal(pool._numpy("vals"), brute_windows(batches, ctx, pos, BEFORE, AFTER))


def test_halvings_match_brute_force():
    """The most halvings s with prio < limit >> s (the squeeze a kept token survives), -1 if
    none, at the edges: limits of 0, 1, powers of two, 2**32, priorities next to them."""
    from indexer.recorders.quantiles_torch import halvings_under

    rng = np.random.default_rng(0)
    special = [0, 1, 2, 3, 4, 5, 7, 8, 9, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32]
    limit = np.concatenate([special, rng.integers(0, 2**32 + 1, 4000)])
    prio = np.concatenate([[0, 0, 1, 2, 3, 4, 6, 7, 8, 2**15, 2**31 - 2, 2**30, 2**32 - 2, 0],
                           rng.integers(0, 2**32, 2000), rng.integers(0, 2**20, 2000)])
    got = halvings_under(torch.from_numpy(prio), torch.from_numpy(limit)).numpy()
    want = [max([-1] + [s for s in range(34) if p < (int(t) >> s)]) for p, t in zip(prio.tolist(), limit.tolist())]
    np.testing.assert_array_equal(got, want)
