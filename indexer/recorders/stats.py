"""Stats: per-feature count, sum, sum of squares, min, max, n_active and a symlog histogram."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from indexer.recorders.common import Recorder, feature_chunk, valid_tokens
from indexer.recorders.histogram import N_BINS, hist_bins_t
from indexer.recorders.stats_kernels import stats_update

ROWS_PER_STEP = 1 << 22  # torch backend: elements per step, bounds the temporaries
ADDITIVE = ("count", "total", "total_sq", "n_active", "hist")


class Stats(Recorder):
    """Running statistics of every feature over the recorded tokens.

    Attributes (state, one entry per feature):
        count: int64, tokens seen.  total, total_sq: float64 sums of x and x**2.
        lo, hi: float32 min and max.  n_active: int64 tokens with x > 0.
        hist: int64 [feat, N_BINS] counts in the fixed bins of `histogram.hist_edges()`.
    NaN activations are not supported.
    """

    kind = "stats"
    arrays = ("count", "total", "total_sq", "lo", "hi", "n_active", "hist")

    def __init__(self, n_features: int, backend: str | None = None, device="cpu"):
        super().__init__(backend, device)
        self.n_features = int(n_features)
        n = self.n_features
        self.count = self._array(np.zeros(n, np.int64))
        self.total = self._array(np.zeros(n, np.float64))
        self.total_sq = self._array(np.zeros(n, np.float64))
        self.lo = self._array(np.full(n, np.inf, np.float32))
        self.hi = self._array(np.full(n, -np.inf, np.float32))
        self.n_active = self._array(np.zeros(n, np.int64))
        self.hist = self._array(np.zeros((n, N_BINS), np.int64))

    def config(self) -> dict[str, Any]:
        return {"n_features": self.n_features}

    @classmethod
    def _config_from_state(cls, state):
        return {"n_features": int(state["n_features"])}

    def _update_numba(self, acts, lengths, ctx_ids) -> None:
        self.count += int(np.maximum(lengths - 1, 0).sum())
        stats_update(acts, lengths, feature_chunk(self.n_features), self.total, self.total_sq,
                     self.lo, self.hi, self.n_active, self.hist)

    def _update_torch(self, acts, lengths, ctx_ids) -> None:
        rows = acts[valid_tokens(lengths, acts.shape[1])]  # [tokens, feat]
        self.count += rows.shape[0]
        offsets = torch.arange(self.n_features, device=acts.device) * N_BINS
        step = max(1, ROWS_PER_STEP // max(1, self.n_features))
        for r in range(0, rows.shape[0], step):
            x = rows[r:r + step]
            d = x.double()
            self.total += d.sum(0)
            self.total_sq += (d * d).sum(0)
            self.lo = torch.fmin(self.lo, x.amin(0))
            self.hi = torch.fmax(self.hi, x.amax(0))
            self.n_active += (x > 0).sum(0)
            idx = (hist_bins_t(x) + offsets).flatten()
            self.hist += torch.bincount(idx, minlength=self.hist.numel()).view_as(self.hist)

    def _merge_numba(self, other: dict[str, np.ndarray]) -> None:
        for name in ADDITIVE:
            np.add(getattr(self, name), other[name], out=getattr(self, name))
        np.fmin(self.lo, other["lo"], out=self.lo)
        np.fmax(self.hi, other["hi"], out=self.hi)

    def _merge_torch(self, other: dict[str, torch.Tensor]) -> None:
        for name in ADDITIVE:
            getattr(self, name).add_(other[name])
        self.lo = torch.fmin(self.lo, other["lo"])
        self.hi = torch.fmax(self.hi, other["hi"])

    def summary(self) -> dict[str, np.ndarray]:
        """n_tokens, mean, std (population), min, max, frac_active, hist [feat, N_BINS]."""
        n = self._numpy("count")
        safe = np.maximum(n, 1)
        with np.errstate(invalid="ignore", over="ignore"):  # inf activations give nan
            mean = self._numpy("total") / safe
            var = np.maximum(self._numpy("total_sq") / safe - mean**2, 0.0)
        empty = n == 0
        nan = np.where(empty, np.nan, 1.0)
        return {
            "n_tokens": n,
            "mean": mean * nan,
            "std": np.sqrt(var) * nan,
            "min": np.where(empty, np.nan, self._numpy("lo")).astype(np.float32),
            "max": np.where(empty, np.nan, self._numpy("hi")).astype(np.float32),
            "frac_active": self._numpy("n_active") / safe * nan,
            "hist": self._numpy("hist"),
        }

