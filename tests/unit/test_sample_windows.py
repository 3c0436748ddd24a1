"""The sample-window pool (recorders/sample_windows.py): true windows of most samples, edge
zones and caps equal on both backends, and top-k windows for samples that are top-k examples.
Loads no model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexer.recorders import N_FINE, FeatureRecorders
from indexer.recorders.finebins import choose_boundaries, fine_bins_np

from helpers.brute_recorders import AFTER, BACKENDS, BEFORE, K, PER_BIN, QUANTILES, SALT, brute_windows, make_batches, run


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_window_pool_holds_true_windows_of_most_samples(backend):
    batches = make_batches(n_batches=8)

    def make():
        return FeatureRecorders.create(24, QUANTILES, K, PER_BIN, SALT, backend, window=(BEFORE, AFTER))

    whole = run(make, batches)
    halves = run(make, batches[:4]), run(make, batches[4:])
    halves[0].merge(halves[1])
    for rec in (whole, halves[0]):
        pool = rec.windows
        ctx, pos = pool._numpy("ctx"), pool._numpy("pos")
        if backend == "numba":
            assert ((ctx >= 0).sum(axis=1) + pool.top == pool.pool).all()  # entries + free = the fixed pool
        keys = [(f, c, p) for f in range(24) for c, p in zip(ctx[f], pos[f]) if c >= 0]
        assert len(keys) == len(set(keys))  # no token twice in a feature's pool
        np.testing.assert_array_equal(pool._numpy("vals"), brute_windows(batches, ctx, pos, BEFORE, AFTER))
        bands = rec.samples.bands()
        s_ctx, s_pos = bands["ctx_id"].reshape(24, -1), bands["pos"].reshape(24, -1)
        feature = np.broadcast_to(np.arange(24)[:, None], s_ctx.shape)
        real = s_ctx >= 0
        found, values = pool.lookup(feature[real], s_ctx[real], s_pos[real])
        want = brute_windows(batches, s_ctx, s_pos, BEFORE, AFTER)[real]
        np.testing.assert_array_equal(values[found], want[found])
        assert found.mean() > 0.5, found.mean()  # most final samples captured (2 entries per sample; 480 tokens)


def test_edge_zones_hold_the_fine_bins_a_moving_edge_would_move_on_both_backends():
    """An estimated band edge's zone (where a fine bin takes the larger cap of the two bands)
    holds every fine bin that would change band if the edge's target rank moved by up to
    zone_tokens (the edge snapping to the boundary nearest it), and no more than one
    fine bin of tokens past those; a fine bin far fuller than that stays out however empty the band beside it.
    The torch refresh computes the same zones as the numba one."""
    from indexer.recorders.sample_window_kernels import edge_zones, zone_tokens
    from indexer.recorders.sample_windows import _edge_zones

    rng = np.random.default_rng(5)
    q = np.array(QUANTILES, np.float64)
    piled = np.concatenate([rng.normal(0, 1, 3000), np.full(2000, 3.0)])  # a top fine bin of 2,000 tokens
    for values in [rng.normal(0, 1, 0), rng.normal(0, 1, 40), np.concatenate([rng.normal(0, 1, 3000), rng.exponential(4, 30)]),
                   np.concatenate([rng.normal(0, 1, 200_000), rng.exponential(4, 2000)]), piled]:
        counts = np.bincount(fine_bins_np(values.astype(np.float32)), minlength=N_FINE).astype(np.int32)
        mids = choose_boundaries(counts[None].astype(np.int64), q)[0]
        edges = np.zeros((len(q), 3), np.int64)
        edges[:, 0] = mids
        edge_zones(counts, q, edges)
        cum = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        lo, hi = _edge_zones(torch.from_numpy(cum)[None], torch.from_numpy(mids)[None], torch.from_numpy(q))
        np.testing.assert_array_equal(edges[:, 1], lo[0].numpy())
        np.testing.assert_array_equal(edges[:, 2], hi[0].numpy())
        for j, m in enumerate(mids):
            w = zone_tokens(cum[-1], q, j)
            moved = set()
            for t in np.linspace(q[j] * cum[-1] - w, q[j] * cum[-1] + w, 401):  # the edge's target, moved
                upper = min(int(np.searchsorted(cum, t)), N_FINE)
                lower = max(upper - 1, 0)
                moved.add(lower if t - cum[lower] <= cum[upper] - t else upper)
            assert edges[j, 1] <= min(moved) and edges[j, 2] >= max(moved), (j, edges[j], sorted(moved))
            # and no more than one fine bin of tokens past them (empty fine bins cost nothing)
            assert np.count_nonzero(counts[edges[j, 1]:min(moved)]) <= 1, (j, edges[j], sorted(moved))
            assert np.count_nonzero(counts[max(moved):edges[j, 2]]) <= 1, (j, edges[j], sorted(moved))
        if values is piled:  # the 0.999 edge sits on the full bin: it cannot cross it
            assert edges[-1, 1] == mids[-1] and counts[mids[-1] - 1] >= 2000


@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_that_are_top_examples_take_their_windows_without_a_pool(backend):
    """With no window pool (--window-pool 0), a quantile sample that is also one of its
    feature's top-k examples gets that example's captured window (the true one), and only the
    others are left for finalize to run the model over."""
    from types import SimpleNamespace

    from indexer.run.examples import collect_examples

    batches = make_batches(n_batches=4)
    rec = run(lambda: FeatureRecorders.create(24, QUANTILES, K, PER_BIN, SALT, backend, window=(BEFORE, AFTER),
                                              pool_per_sample=0), batches)
    assert rec.windows.pool == 0
    ex = collect_examples(SimpleNamespace(key="x"), rec, window=(BEFORE, AFTER))
    top = rec.topk.result()
    top_keys = {(f, int(c), int(p)) for f in range(24) for c, p in zip(np.asarray(top[1][f]), np.asarray(top[2][f]))
                if c >= 0}
    sample = ex.kind == 1
    is_top = np.array([(int(f), int(c), int(p)) in top_keys for f, c, p in zip(ex.feature, ex.ctx_id, ex.pos)])
    assert (sample & is_top).sum() > 10  # the fallback is exercised
    np.testing.assert_array_equal(ex.captured[sample], is_top[sample])
    every = brute_windows(batches, np.tile(ex.ctx_id, (24, 1)), np.tile(ex.pos, (24, 1)), BEFORE, AFTER)
    want = every[ex.feature, np.arange(len(ex))]  # each example's own feature
    np.testing.assert_array_equal(ex.window_values[ex.captured], want[ex.captured])


def test_pool_refresh_gives_the_same_edges_zones_and_caps_on_both_backends():
    """The numba refresh and the torch one estimate the same band edges, zones and caps (each
    band's, and the zone caps of the band a zone bin would join) from the same fine counts."""
    batches = make_batches(n_batches=5)
    recs = [run(lambda b=b: FeatureRecorders.create(24, QUANTILES, K, PER_BIN, SALT, b, window=(BEFORE, AFTER)), batches)
            for b in ("numba", "torch")]
    for rec in recs:
        rec.windows.sweep(rec.samples)
    numba_rec, torch_rec = recs
    np.testing.assert_array_equal(np.asarray(numba_rec.windows.edges), torch_rec.windows.edges.numpy())
    np.testing.assert_array_equal(np.asarray(numba_rec.windows.band_cap), torch_rec.windows.band_cap.numpy())
    assert (np.asarray(numba_rec.windows.edges)[:, :, 3:] > 0).all()
