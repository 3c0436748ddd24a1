"""TopK: per feature, the k contexts with the largest activation, one example per context."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from indexer.recorders.common import (
    SHORT_CONTEXT, Recorder, RecorderError, check_batch, feature_chunk, position_dtype, state_max_len, torch_batch,
    valid_tokens,
)
from indexer.recorders.topk_kernels import topk_merge, topk_update

_NO_CTX = torch.iinfo(torch.int64).max  # sort key of an empty slot: after every context


class TopK(Recorder):
    """Exact per-feature top-k over contexts.

    A context's example is its maximum over the recorded positions (the first position on
    ties). Lists are sorted by value descending, then ctx_id ascending; a context appears
    at most once. Empty slots: value -inf, ctx_id -1, pos -1.

    Each entry keeps its window (topk_kernels.py): the feature's values from
    ``max(pos - before, 0)`` to ``min(pos + after, length - 1)``, zero-padded to
    ``W = before + after + 1``, so finalize needs no forward pass for top-k examples.

    Attributes:
        vals: float32 [feat, k].  ctxs: int32 [feat, k] (ctx ids < 2**31, as the sampler's).
        poss: int16 [feat, k] (int32 for contexts over common.SHORT_CONTEXT tokens).
        wins: float32 [feat, k, W].
    """

    kind = "topk"
    arrays = ("vals", "ctxs", "poss", "wins")

    def __init__(self, n_features: int, k: int = 20, backend: str | None = None, device="cpu",
                 before: int = 0, after: int = 0, max_len: int = SHORT_CONTEXT):
        super().__init__(backend, device)
        if k < 1:
            raise RecorderError(f"k={k} but expected k >= 1")
        if before < 0 or after < 0:
            raise RecorderError(f"window before={before}, after={after} but expected both >= 0")
        self.n_features, self.k = int(n_features), int(k)
        self.before, self.after, self.max_len = int(before), int(after), int(max_len)
        self.width = self.before + self.after + 1
        self.vals = self._array(np.full((self.n_features, self.k), -np.inf, np.float32))
        self.ctxs = self._array(np.full((self.n_features, self.k), -1, np.int32))
        self.poss = self._array(np.full((self.n_features, self.k), -1, position_dtype(self.max_len)))
        self.wins = self._array(np.zeros((self.n_features, self.k, self.width), np.float32))

    def config(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "k": self.k, "before": self.before, "after": self.after,
                "max_len": self.max_len}

    @classmethod
    def _config_from_state(cls, state):
        if "before" not in state:
            raise RecorderError("top-k state without windows: written by an older neuroscope; re-index")
        return {"n_features": int(state["n_features"]), "k": int(state["k"]),
                "before": int(state["before"]), "after": int(state["after"]), "max_len": state_max_len(state)}

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values float32, ctx_ids int64, pos int32), each [feat, k], best first."""
        return self._numpy("vals"), self._numpy("ctxs").astype(np.int64), self._numpy("poss").astype(np.int32)

    def windows(self) -> np.ndarray:
        """float32 [feat, k, W]: each entry's window, in the order of ``result``."""
        return self._numpy("wins")

    def _update_numba(self, acts, lengths, ctx_ids) -> None:
        topk_update(acts, lengths, ctx_ids, feature_chunk(self.n_features),
                    self.vals, self.ctxs, self.poss, self.wins, self.before)

    def _merge_numba(self, other: dict[str, np.ndarray]) -> None:
        topk_merge(self.vals, self.ctxs, self.poss, self.wins,
                   other["vals"], other["ctxs"], other["poss"], other["wins"])

    def update(self, acts: torch.Tensor, lengths: torch.Tensor, ctx_ids: torch.Tensor, skip_zeros: bool = False) -> None:
        """Record one batch (common.Recorder.update); ``skip_zeros`` (torch backend; the numba
        one runs it in sparse_kernels): a zero is never a candidate, as NaN is not."""
        if not skip_zeros:
            return super().update(acts, lengths, ctx_ids)
        if self.backend == "numba":
            raise RecorderError("skip_zeros on the numba backend runs in the fused sparse kernel (FeatureRecorders)")
        check_batch(acts, lengths, ctx_ids, self.n_features, self.max_len)
        with torch.no_grad():
            self._update_torch(*torch_batch(acts, lengths, ctx_ids, self.device), skip_zeros=True)

    def _update_torch(self, acts, lengths, ctx_ids, skip_zeros: bool = False) -> None:
        n_batch, n_pos, _ = acts.shape
        valid = valid_tokens(lengths, n_pos)[..., None] & ~torch.isnan(acts)  # [batch, pos, feat]
        if skip_zeros:
            valid &= acts != 0
        masked = acts.masked_fill(~valid, float("-inf"))  # [batch, pos, feat]
        best = masked.amax(dim=1)  # [batch, feat]
        first = ((masked == best[:, None, :]) & valid).to(torch.uint8).argmax(dim=1)
        has = valid.any(dim=1)  # [batch, feat]: a context where the feature saw no token has no entry
        vals = torch.where(has, best, float("-inf")).T  # [feat, batch]
        ctxs = torch.where(has, ctx_ids[:, None], -1).expand(-1, self.n_features).T
        poss = torch.where(has, first, -1).to(torch.int32).T
        wins = self._windows_torch(acts, lengths, first).masked_fill(~has[:, :, None], 0)  # [batch, feat, W]
        self._keep_best(vals, ctxs, poss, wins.transpose(0, 1))

    def _windows_torch(self, acts, lengths, first) -> torch.Tensor:
        """[batch, feat, W]: each feature's values over the window around its first max."""
        n_pos = acts.shape[1]
        start = (first - self.before).clamp(min=0)  # [batch, feat]
        stop = torch.minimum(first + self.after + 1, lengths[:, None])
        cols = start[:, :, None] + torch.arange(self.width, device=acts.device)  # [batch, feat, W]
        inside = cols < stop[:, :, None]
        got = acts.gather(1, cols.clamp(max=n_pos - 1).transpose(1, 2))  # [batch, W, feat]
        return got.transpose(1, 2).masked_fill(~inside, 0)

    def _merge_torch(self, other: dict[str, torch.Tensor]) -> None:
        self._keep_best(other["vals"], other["ctxs"], other["poss"], other["wins"])

    def _keep_best(self, vals, ctxs, poss, wins) -> None:
        """Replace the lists by the top k of lists + candidates [feat, m] (windows [feat, m, W])."""
        v = torch.cat([self.vals, vals], dim=1)
        c = torch.cat([self.ctxs, ctxs.to(self.ctxs.dtype)], dim=1)
        p = torch.cat([self.poss, poss.to(self.poss.dtype)], dim=1)
        w = torch.cat([self.wins, wins], dim=1)
        # 1) order by (ctx, value desc) and blank all but the best entry of each context
        order = _lexsort(-v, _ctx_key(c))
        v, c, p = _take(order, v, c, p)
        w = w.gather(1, order[:, :, None].expand(-1, -1, self.width))
        key = _ctx_key(c)
        dup = torch.zeros_like(c, dtype=torch.bool)
        dup[:, 1:] = (key[:, 1:] == key[:, :-1]) & (c[:, 1:] >= 0)
        v, c, p = v.masked_fill(dup, float("-inf")), c.masked_fill(dup, -1), p.masked_fill(dup, -1)
        w = w.masked_fill(dup[:, :, None], 0)
        # 2) order by (value desc, ctx) and keep k
        order = _lexsort(_ctx_key(c), -v)[:, :self.k]
        v, c, p = _take(order, v, c, p)
        w = w.gather(1, order[:, :, None].expand(-1, -1, self.width))
        self.vals, self.ctxs, self.poss, self.wins = (a.contiguous() for a in (v, c, p, w))


def _ctx_key(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c < 0, _NO_CTX, c.to(torch.int64))



def _lexsort(minor: torch.Tensor, major: torch.Tensor) -> torch.Tensor:
    """Row-wise indices sorting by (major, minor) ascending."""
    order = torch.sort(minor, dim=1, stable=True).indices
    return order.gather(1, torch.sort(major.gather(1, order), dim=1, stable=True).indices)


def _take(order: torch.Tensor, *arrays: torch.Tensor):
    return tuple(a.gather(1, order) for a in arrays)
