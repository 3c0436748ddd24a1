"""attention_rows: sparse rows against a per-row brute force, and the row store's bookkeeping."""

from __future__ import annotations

import numpy as np

from indexer.forward.sites import Site
from indexer.recorders import FeatureRecorders
from indexer.run.attention_rows import MAX_SOURCES, THRESHOLD, AttentionRows, sparse_rows


def brute_row(weights: np.ndarray, pos: int) -> tuple[list[int], list[float]]:
    """Sources 0..pos with weight >= THRESHOLD, largest first, earlier source on ties, at most MAX_SOURCES."""
    kept = sorted((-w, j) for j, w in enumerate(weights[: pos + 1]) if w >= THRESHOLD)[:MAX_SOURCES]
    return [j for _, j in kept], [-w for w, _ in kept]


def test_sparse_rows_equal_a_per_row_brute_force():
    rng = np.random.default_rng(0)
    for width in (5, 40, 100):  # shorter and longer than MAX_SOURCES
        dense = rng.dirichlet(np.full(width, 0.3), size=60).astype(np.float32)
        dense[:, ::7] = np.float32(0.02)  # ties, all above the threshold
        dense[::5, :] = np.float32(1 / width)  # whole rows of ties
        poss = rng.integers(0, width, size=60)
        src, weights, count = sparse_rows(dense, poss)
        assert src.shape == weights.shape == (60, MAX_SOURCES)
        for i in range(60):
            want_src, want_w = brute_row(dense[i], int(poss[i]))
            assert src[i, : count[i]].tolist() == want_src
            np.testing.assert_array_equal(weights[i, : count[i]], np.array(want_w, np.float32))
        assert (count > 0).all()
    assert (count == MAX_SOURCES).any()  # the cap was met in the widest rows


def test_rows_cut_as_on_an_accelerator_equal_sparse_rows():
    """_cut_on_device (every entry's row gathered, a topk of (weight, source) keys) gives the
    rows sparse_rows gives, ties included, and marks the entries of the batch's contexts."""
    import torch

    from indexer.run.attention_rows import _cut_on_device

    rng = np.random.default_rng(1)
    n_heads, width = 3, 40
    pattern = rng.dirichlet(np.full(width, 0.3), size=(2, n_heads, width)).astype(np.float32)  # [batch, head, q, k]
    pattern[:, :, :, ::7] = np.float32(0.02)
    pattern[1, 2] = np.float32(1 / width)  # whole rows of ties
    rec = FeatureRecorders.create(n_heads * 4, k=2, per_bin=1, backend="torch", max_len=width)
    rec.topk.ctxs[:] = torch.as_tensor(rng.choice([-1, 7, 8, 9], size=tuple(rec.topk.ctxs.shape)))
    rec.topk.poss[:] = torch.as_tensor(rng.integers(0, width, size=tuple(rec.topk.poss.shape)))
    rec.windows.ctx[:] = torch.as_tensor(rng.choice([-1, 8, 9], size=tuple(rec.windows.ctx.shape)))
    rec.windows.pos[:] = torch.as_tensor(rng.integers(0, width, size=tuple(rec.windows.pos.shape)))
    event, host = _cut_on_device(rec, torch.tensor([9, 8]), torch.from_numpy(pattern))
    assert event is None
    in_batch, ctx, pos, src, weights, count = (t.numpy() for t in host)
    assert (in_batch == np.isin(ctx, [8, 9])).all() and in_batch.sum() > 10
    f, j = np.nonzero(in_batch)
    rows = np.where(ctx[f, j] == 9, 0, 1)
    want = sparse_rows(pattern[rows, f // 4, pos[f, j]], pos[f, j])
    for got, expected in zip((src[f, j], weights[f, j], count[f, j]), want):
        np.testing.assert_array_equal(got, expected)


def test_the_store_keeps_rows_through_growth_and_prunes_to_the_live_entries():
    rows = AttentionRows(capacity=2)
    rng = np.random.default_rng(1)
    made = {}
    for batch in range(5):  # grows past its capacity twice
        keys = [(0, h, batch, p) for h in range(2) for p in range(3)]
        src = rng.integers(0, 50, size=(len(keys), MAX_SOURCES)).astype(np.int32)
        weights = rng.random((len(keys), MAX_SOURCES)).astype(np.float32)
        count = rng.integers(0, MAX_SOURCES + 1, size=len(keys))
        rows._store(keys, src, weights, count)
        made.update({k: (src[i, : count[i]], weights[i, : count[i]]) for i, k in enumerate(keys)})
    assert len(rows) == len(made) == 30
    for key, (src, weights) in made.items():
        got = rows.get(key)
        np.testing.assert_array_equal(got[0], src)
        np.testing.assert_array_equal(got[1], weights)
    assert rows.get((0, 0, 99, 0)) is None
    # prune: only entries a heads site's recorders still hold survive (head = feature // 4)
    site = Site(name="heads", layer=0, n_features=8)
    rec = FeatureRecorders.create(8, (0.5,), 2, 1, 0, "numba", window=(1, 1))
    rec.topk.ctxs[4, 0], rec.topk.poss[4, 0] = 3, 2  # head 1, context 3, position 2
    rec.windows.ctx[0, 0], rec.windows.pos[0, 0] = 0, 1  # head 0, context 0, position 1
    rows.prune({site: rec})
    assert sorted(rows.slot) == [(0, 0, 0, 1), (0, 1, 3, 2)]
    for key in rows.slot:
        np.testing.assert_array_equal(rows.get(key)[1], made[key][1])
