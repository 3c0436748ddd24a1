"""QuantileSampler: per feature and activation bin, the exact count and a uniform sample."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from indexer.recorders.common import Recorder, RecorderError, feature_chunk, valid_tokens
from indexer.recorders.hashing import EMPTY_PRIORITY, feature_keys, priority_t, seed_of, token_hash_t
from indexer.recorders.quantile_kernels import quantile_merge, quantile_update

ELEMENTS_PER_STEP = 1 << 22  # torch backend: tokens x features per step, bounds the temporaries
ROWS_PER_STEP = 1 << 21  # and tokens per step: priority * ROWS_PER_STEP + row fits int64
_NO_KEY = 1 << 62


class QuantileSampler(Recorder):
    """Bin counts and bottom-k-by-priority samples per (feature, bin).

    edges float32 [feat, Q] (ascending per feature) define Q+1 bins: a token with value x
    falls in bin #{q : x >= edges[f, q]}. Each bin keeps the `per_bin` tokens with the
    smallest hash priority (ties by ctx_id, pos): a uniform sample without replacement
    that depends only on the tokens seen, so shards and resumed runs merge exactly.

    Attributes:
        bin_counts: int64 [feat, Q+1].
        prio: int64, vals: float32, ctxs: int64, poss: int32, each [feat, Q+1, per_bin],
            sorted by priority; empty slots have prio 2**32, ctx_id -1, pos -1, value nan.
    """

    kind = "quantiles"
    arrays = ("bin_counts", "prio", "vals", "ctxs", "poss")

    def __init__(self, n_features: int, edges, per_bin: int = 5, salt: int = 0,
                 backend: str | None = None, device="cpu"):
        super().__init__(backend, device)
        edges = np.ascontiguousarray(np.asarray(edges, dtype=np.float32))
        if edges.ndim != 2 or edges.shape[0] != n_features:
            raise RecorderError(f"edges shape={edges.shape} but expected [{n_features}, Q]")
        if (np.diff(edges, axis=1) < 0).any():
            raise RecorderError("edges must be non-decreasing along each feature")
        if per_bin < 1:
            raise RecorderError(f"per_bin={per_bin} but expected per_bin >= 1")
        self.n_features, self.per_bin, self.salt = int(n_features), int(per_bin), int(salt)
        self.seed = seed_of(self.salt)
        self.edges = edges  # numpy, the config
        self.device_edges = self._array(edges)  # the edges as the backend reads them
        self.keys = self._array(feature_keys(self.n_features))
        if self.backend == "torch":
            self.keys = self.keys.to(torch.int64)
        shape = (self.n_features, edges.shape[1] + 1, self.per_bin)
        self.bin_counts = self._array(np.zeros(shape[:2], np.int64))
        self.prio = self._array(np.full(shape, EMPTY_PRIORITY, np.int64))
        self.vals = self._array(np.full(shape, np.nan, np.float32))
        self.ctxs = self._array(np.full(shape, -1, np.int64))
        self.poss = self._array(np.full(shape, -1, np.int32))

    def config(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "edges": self.edges,
                "per_bin": self.per_bin, "salt": self.salt}

    @classmethod
    def _config_from_state(cls, state):
        return {"n_features": int(state["n_features"]), "edges": np.asarray(state["edges"]),
                "per_bin": int(state["per_bin"]), "salt": int(state["salt"])}

    def counts(self) -> np.ndarray:
        """int64 [feat, Q+1] exact token counts per bin."""
        return self._numpy("bin_counts")

    def samples(self) -> dict[str, np.ndarray]:
        """prio, value, ctx_id, pos, each [feat, Q+1, per_bin], sorted by priority."""
        return {"prio": self._numpy("prio"), "value": self._numpy("vals"),
                "ctx_id": self._numpy("ctxs"), "pos": self._numpy("poss")}

    def _update_numba(self, acts, lengths, ctx_ids) -> None:
        quantile_update(acts, lengths, ctx_ids, feature_chunk(self.n_features),
                        np.uint32(self.seed), self.keys, self.device_edges, self.bin_counts,
                        self.prio, self.vals, self.ctxs, self.poss)

    def _merge_numba(self, other: dict[str, np.ndarray]) -> None:
        self.bin_counts += other["bin_counts"]
        quantile_merge(self.prio, self.vals, self.ctxs, self.poss,
                       other["prio"], other["vals"], other["ctxs"], other["poss"])

    def _update_torch(self, acts, lengths, ctx_ids) -> None:
        b, t = valid_tokens(lengths, acts.shape[1]).nonzero(as_tuple=True)  # [tokens]
        order = torch.sort(ctx_ids[b], stable=True).indices  # tokens by (ctx, pos)
        b, t = b[order], t[order]
        n_feat, n_bins = self.bin_counts.shape
        feat = torch.arange(n_feat, device=acts.device)
        step = max(1, min(ROWS_PER_STEP, ELEMENTS_PER_STEP // max(1, n_feat)))
        found = []
        for r in range(0, b.numel(), step):
            x = acts[b[r:r + step], t[r:r + step]]  # [tokens, feat]
            ctx, pos = ctx_ids[b[r:r + step]], t[r:r + step]
            bins = torch.zeros(x.shape, dtype=torch.int64, device=x.device)  # [tokens, feat]
            for q in range(n_bins - 1):
                bins += x >= self.device_edges[:, q]
            self.bin_counts += torch.bincount((feat * n_bins + bins).flatten(),
                                              minlength=self.bin_counts.numel()).view_as(self.bin_counts)
            prio = priority_t(token_hash_t(self.seed, ctx, pos), self.keys)  # [tokens, feat]
            # rows are in (ctx, pos) order, so the row index breaks priority ties exactly
            key = prio * ROWS_PER_STEP + torch.arange(x.shape[0], device=x.device)[:, None]
            for q in range(n_bins):
                best = torch.topk(torch.where(bins == q, key, _NO_KEY), min(self.per_bin, x.shape[0]),
                                  dim=0, largest=False)  # [per_bin, feat]
                row, f = best.indices, feat.expand_as(best.indices)
                ok = best.values != _NO_KEY
                row, f = row[ok], f[ok]
                found.append((f * n_bins + q, prio[row, f], x[row, f], ctx[row], pos[row]))
        if found:
            self._keep_best(*(torch.cat(cols) for cols in zip(*found)))

    def _merge_torch(self, other: dict[str, torch.Tensor]) -> None:
        self.bin_counts += other["bin_counts"]
        group = torch.arange(self.bin_counts.numel(), device=self.device).repeat_interleave(self.per_bin)
        keep = other["ctxs"].flatten() >= 0
        self._keep_best(group[keep], *(other[k].flatten()[keep] for k in ("prio", "vals", "ctxs", "poss")))

    def _keep_best(self, group, prio, vals, ctxs, poss) -> None:
        """Replace the slots by the bottom per_bin of slots + candidates (flat, by group)."""
        n_groups = self.bin_counts.numel()
        old_group = torch.arange(n_groups, device=self.device).repeat_interleave(self.per_bin)
        old = self.ctxs.flatten() >= 0
        cols = [torch.cat([a, b]) for a, b in zip(
            (old_group[old], self.prio.flatten()[old], self.vals.flatten()[old],
             self.ctxs.flatten()[old], self.poss.flatten()[old]),
            (group, prio, vals, ctxs, poss.to(torch.int32)))]
        g, p, v, c, s = _sorted_unique(*cols)
        start = torch.searchsorted(g, g)
        rank = torch.arange(g.numel(), device=self.device) - start
        sel = rank < self.per_bin
        flat = g[sel] * self.per_bin + rank[sel]
        for name, col, empty in (("prio", p, EMPTY_PRIORITY), ("vals", v, float("nan")),
                                 ("ctxs", c, -1), ("poss", s, -1)):
            out = torch.full_like(getattr(self, name).flatten(), empty)
            out[flat] = col[sel]
            setattr(self, name, out.view(getattr(self, name).shape))


def _sorted_unique(group, prio, vals, ctxs, poss):
    """Sort by (group, prio, ctx, pos) and drop repeated tokens."""
    order = torch.sort(poss, stable=True).indices
    for key in (ctxs, prio, group):
        order = order[torch.sort(key[order], stable=True).indices]
    g, p, v, c, s = (a[order] for a in (group, prio, vals, ctxs, poss))
    new = torch.ones_like(g, dtype=torch.bool)
    new[1:] = (g[1:] != g[:-1]) | (p[1:] != p[:-1]) | (c[1:] != c[:-1]) | (s[1:] != s[:-1])
    return tuple(a[new] for a in (g, p, v, c, s))
