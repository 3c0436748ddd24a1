"""Plain brute-force references for the recorder tests (sort everything), and the synthetic
batches they run on: quantised values (many ties, negatives), varied lengths, BOS-only contexts."""

from __future__ import annotations

import numpy as np
import torch

from indexer.recorders import N_BINS, N_FINE, FeatureRecorders, QuantileSampler, Stats, TopK, hist_edges
from indexer.recorders.keep_rule import fine_thresholds_np
from indexer.recorders.finebins import fine_bins_np
from indexer.recorders.hashing import priority_np

BACKENDS = ["numba", "torch"]
K, PER_BIN, SALT = 4, 3, 7
BEFORE, AFTER = 3, 2  # top-k windows: wide enough to reach BOS and the context's end


def make_batches(n_feat=24, n_batches=6, batch=5, n_pos=12, seed=0, ctx_base=0):
    """Quantised values (many ties, negatives), varied lengths incl. BOS-only contexts."""
    rng = np.random.default_rng(seed)
    out, next_ctx = [], ctx_base
    for _ in range(n_batches):
        acts = rng.integers(-8, 9, size=(batch, n_pos, n_feat)).astype(np.float32) / 4  # [batch, pos, feat]
        acts[:, :, 0] = 0.5  # a constant feature: ties everywhere
        lengths = rng.integers(1, n_pos + 1, size=batch)
        lengths[0] = 1
        lengths[-1] = n_pos
        ctx = next_ctx + np.cumsum(rng.integers(1, 4, size=batch))
        next_ctx = int(ctx[-1]) + 1
        out.append((torch.from_numpy(acts), torch.from_numpy(lengths), torch.from_numpy(ctx)))
    return out


def tokens(batches):
    """All recorded tokens: values [tokens, feat], ctx [tokens], pos [tokens]."""
    vals, ctx, pos = [], [], []
    for acts, lengths, ctx_ids in batches:
        for b in range(acts.shape[0]):
            for t in range(1, int(lengths[b])):
                vals.append(acts[b, t].numpy())
                ctx.append(int(ctx_ids[b]))
                pos.append(t)
    return np.array(vals, np.float32), np.array(ctx, np.int64), np.array(pos, np.int64)


QUANTILES = (0.3, 0.5, 0.9)


def edges_for(batches, quantiles=QUANTILES):
    """The requested quantiles (the sampler now cuts its edges from all tokens)."""
    return quantiles


def brute_topk(batches, k):
    vals, ctx, pos = tokens(batches)
    n_feat = vals.shape[1]
    best = {}  # (feature, ctx) -> (value, pos): the first position of the context's max
    for v, c, p in zip(vals, ctx, pos):
        for f in range(n_feat):
            if (f, c) not in best or v[f] > best[f, c][0]:
                best[f, c] = (v[f], p)
    out_v = np.full((n_feat, k), -np.inf, np.float32)
    out_c = np.full((n_feat, k), -1, np.int64)
    out_p = np.full((n_feat, k), -1, np.int32)
    for f in range(n_feat):
        rows = sorted((-v, c, p) for (g, c), (v, p) in best.items() if g == f)[:k]
        for i, (nv, c, p) in enumerate(rows):
            out_v[f, i], out_c[f, i], out_p[f, i] = -nv, c, p
    return out_v, out_c, out_p


def brute_windows(batches, ctxs, poss, before, after):
    """[feat, k, W]: each top-k entry's window as finalize cuts it from the whole context
    (BOS included), zero-padded past the window's end."""
    by_ctx = {}
    for acts, lengths, ctx_ids in batches:
        for b in range(acts.shape[0]):
            by_ctx[int(ctx_ids[b])] = acts[b, : int(lengths[b])].numpy()  # [length, feat]
    width = before + after + 1
    out = np.zeros((*ctxs.shape, width), np.float32)
    for f, i in zip(*np.nonzero(ctxs >= 0)):
        rows = by_ctx[int(ctxs[f, i])]
        start, stop = max(int(poss[f, i]) - before, 0), min(int(poss[f, i]) + after + 1, len(rows))
        out[f, i, : stop - start] = rows[start:stop, f]
    return out


def brute_kept(batches, per_bin, salt, quantiles=QUANTILES):
    """Fine-bin counts [feat, N_FINE] and the kept set [n, 4] (feature, prio, ctx, pos) the keep
    rule defines for them (keep_rule.fine_thresholds_np), sorted, from every token."""
    vals, ctx, pos = tokens(batches)
    n_feat = vals.shape[1]
    bins = fine_bins_np(vals)  # [tokens, feat]
    counts = np.stack([np.bincount(bins[:, f], minlength=N_FINE) for f in range(n_feat)])
    thr = fine_thresholds_np(counts, np.asarray(quantiles), per_bin, np.zeros(n_feat, np.int64))
    rows = []
    for f in range(n_feat):
        prio = priority_np(salt, np.full(len(ctx), f), ctx, pos)
        keep = prio < thr[f, bins[:, f]]
        rows += sorted(zip([f] * int(keep.sum()), prio[keep], ctx[keep], pos[keep]))
    return counts, np.array(rows, np.int64).reshape(-1, 4)


def brute_boundary(column: np.ndarray, q: float) -> int:
    """The fine boundary j whose share below is nearest q*n (ties: below, then the boundary
    next to the target), found by trying every boundary."""
    below = np.array([(column < j).sum() for j in range(N_FINE)])
    target = q * len(column)
    keys = [(abs(b - target), 0, -j) if b < target else (abs(b - target), 1, j) for j, b in enumerate(below)]
    return int(min(range(N_FINE), key=keys.__getitem__))


def brute_quantiles(batches, quantiles, per_bin, salt):
    """Band counts [feat, Q+1] and band samples [feat, Q+1, per_bin, 3] (prio, ctx, pos) from
    every token: edges at the fine boundaries nearest the quantiles of all tokens."""
    vals, ctx, pos = tokens(batches)
    n_feat, n_bins = vals.shape[1], len(quantiles) + 1
    fine = fine_bins_np(vals)
    bounds = np.array([[brute_boundary(fine[:, f], q) for q in quantiles] for f in range(n_feat)])
    bins = (fine[:, :, None] >= bounds[None]).sum(axis=2)  # [tokens, feat]
    counts = np.zeros((n_feat, n_bins), np.int64)
    samples = np.full((n_feat, n_bins, per_bin, 3), -1, np.int64)  # prio, ctx, pos
    for f in range(n_feat):
        prio = priority_np(salt, np.full(len(ctx), f), ctx, pos)
        for q in range(n_bins):
            idx = np.flatnonzero(bins[:, f] == q)
            counts[f, q] = len(idx)
            rows = sorted(zip(prio[idx], ctx[idx], pos[idx]))[:per_bin]
            for i, row in enumerate(rows):
                samples[f, q, i] = row
    return counts, samples, bounds


def brute_hist_bin(x):
    """Bin from hist_edges by search: positive bins [lo, hi), negative (lo, hi]."""
    e = hist_edges()
    if abs(x) < e[65]:
        return 64
    side = "right" if x > 0 else "left"
    return int(np.clip(np.searchsorted(e, x, side=side) - 1, 0, N_BINS - 1))


def run(make, batches):
    rec = make()
    for batch in batches:
        rec.update(*batch)
    return rec


def makers(backend, edges, device="cpu"):
    """Makers of each recorder and of the fused bundle, on ``backend`` and ``device``."""
    return [lambda: TopK(24, K, backend, device, before=BEFORE, after=AFTER),
            lambda: QuantileSampler(24, edges, PER_BIN, SALT, backend, device),
            lambda: Stats(24, backend, device),
            lambda: FeatureRecorders.create(24, edges, K, PER_BIN, SALT, backend, device, window=(BEFORE, AFTER))]


def everything(rec) -> dict[str, np.ndarray]:
    """Every result of a recorder (or FeatureRecorders) as numpy arrays."""
    if isinstance(rec, FeatureRecorders):
        return {f"{p}.{k}": v for p in ("topk", "samples", "stats") for k, v in everything(getattr(rec, p)).items()}
    if isinstance(rec, TopK):
        return {**dict(zip(("vals", "ctxs", "poss"), rec.result())), "wins": rec.windows()}
    if isinstance(rec, QuantileSampler):  # the counts and kept set (canonical), and the bands cut from them
        fine = {"fine_counts": rec._numpy("fine_counts"), "squeeze": rec._numpy("squeeze").astype(np.int64),
                **{f"kept.{k}": v for k, v in rec.kept().items()}}
        bands = {k: v for k, v in rec.bands().items() if k != "status"}
        return {**fine, **bands, "status": rec.bands()["status"].astype(str)}
    return rec.summary()


def assert_same(a, b):
    """Every result equal, bit for bit (mean and std too: the stats' sums are exact)."""
    ra, rb = everything(a), everything(b)
    assert ra.keys() == rb.keys()
    for key in ra:
        np.testing.assert_array_equal(ra[key], rb[key], err_msg=key)
        if ra[key].dtype.kind == "f":
            assert ra[key].tobytes() == rb[key].tobytes(), key
