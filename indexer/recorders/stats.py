"""Stats: per-feature count, sum, sum of squares, min, max and n_active.

The feature's histogram is not kept here: it is a sum of the quantile sampler's fine-bin
counts (``QuantileSampler.histogram``, ``histogram.hist_from_fine``).

The sums are exact and independent of order (``indexer.recorders.exactsum``), so a merge of
shards, a resumed run and either backend give the single run's mean and std bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from indexer.recorders import exactsum
from indexer.recorders.common import Recorder, RecorderError, feature_chunk, step_elements, valid_tokens
from indexer.recorders.stats_kernels import stats_update

ROWS_PER_STEP = 1 << 22  # torch backend: elements per step, bounds the temporaries
ADDITIVE = ("count", "n_active")
EXACT = ("total", "total_sq")


class Stats(Recorder):
    """Running statistics of every feature over the recorded tokens.

    Attributes (state, one entry per feature):
        count: int64, tokens seen (a NaN value is a token the feature did not see: skipped).
        total, total_sq: int64 [exactsum.ROWS, feat], exact sums of x and x**2 (integer limbs,
            plus a float64 side sum of values beyond exactsum.BOUND: order-independent below it).
        lo, hi: float32 min and max.  n_active: int64 tokens with x > 0.
    """

    kind = "stats"
    arrays = ("count", "total", "total_sq", "lo", "hi", "n_active")

    def __init__(self, n_features: int, backend: str | None = None, device="cpu"):
        super().__init__(backend, device)
        self.n_features = int(n_features)
        n = self.n_features
        self.count = self._array(np.zeros(n, np.int64))
        self.total = self._array(exactsum.zeros(n))
        self.total_sq = self._array(exactsum.zeros(n))
        self.lo = self._array(np.full(n, np.inf, np.float32))
        self.hi = self._array(np.full(n, -np.inf, np.float32))
        self.n_active = self._array(np.zeros(n, np.int64))

    def config(self) -> dict[str, Any]:
        return {"n_features": self.n_features}

    @classmethod
    def _config_from_state(cls, state):
        total = np.asarray(state.get("total", ()))
        if total.dtype != np.int64 or total.ndim != 2:
            raise RecorderError(f"stats state holds {total.dtype} sums of shape {total.shape}, not exact int64 "
                                f"limbs: it was written by an older neuroscope; index again")
        return {"n_features": int(state["n_features"])}

    def _update_numba(self, acts, lengths, ctx_ids) -> None:
        n_values = int(np.maximum(lengths - 1, 0).sum())
        exactsum.check_capacity(n_values)
        stats_update(acts, lengths, feature_chunk(self.n_features), self.count, self.total, self.total_sq,
                     self.lo, self.hi, self.n_active)
        self.normalise()

    def normalise(self) -> None:
        """Carry the limbs of the exact sums (after every numba update call)."""
        exactsum.normalise_nb(self.total)
        exactsum.normalise_nb(self.total_sq)

    def _update_torch(self, acts, lengths, ctx_ids) -> None:
        """Every position of the batch, those not recorded (BOS, padding) masked as unseen:
        steps by shape, not by data, so a GPU never waits for a count (no host sync)."""
        rows = acts.reshape(-1, self.n_features)  # [batch * pos, feat]
        recorded = valid_tokens(lengths, acts.shape[1]).reshape(-1, 1)
        step = max(1, step_elements(ROWS_PER_STEP, acts.device) // max(1, self.n_features))
        for r in range(0, rows.shape[0], step):
            x = rows[r:r + step]
            unseen = torch.isnan(x) | ~recorded[r:r + step]
            self.count += (~unseen).sum(0)
            d = x.double().masked_fill(unseen, 0.0)
            small = d.abs() < exactsum.BOUND
            exactsum.add_t(self.total, d, small)
            exactsum.add_t(self.total_sq, d * d, small)
            self.lo = torch.fmin(self.lo, x.masked_fill(unseen, float("inf")).amin(0))
            self.hi = torch.fmax(self.hi, x.masked_fill(unseen, float("-inf")).amax(0))
            self.n_active += ((x > 0) & ~unseen).sum(0)

    def _merge_numba(self, other: dict[str, np.ndarray]) -> None:
        for name in ADDITIVE:
            np.add(getattr(self, name), other[name], out=getattr(self, name))
        for name in EXACT:
            exactsum.merge_np(getattr(self, name), other[name])
        np.fmin(self.lo, other["lo"], out=self.lo)
        np.fmax(self.hi, other["hi"], out=self.hi)

    def _merge_torch(self, other: dict[str, torch.Tensor]) -> None:
        for name in ADDITIVE:
            getattr(self, name).add_(other[name])
        for name in EXACT:
            exactsum.merge_t(getattr(self, name), other[name])
        self.lo = torch.fmin(self.lo, other["lo"])
        self.hi = torch.fmax(self.hi, other["hi"])

    def summary(self) -> dict[str, np.ndarray]:
        """n_tokens, mean, std (population), min, max, frac_active.

        mean and std are computed from the exact sums (``exactsum.mean_std``)."""
        n = self._numpy("count")
        safe = np.maximum(n, 1)
        mean, std = exactsum.mean_std(self._numpy("total"), self._numpy("total_sq"), n)
        empty = n == 0
        nan = np.where(empty, np.nan, 1.0)
        return {
            "n_tokens": n,
            "mean": mean,
            "std": std,
            "min": np.where(empty, np.nan, self._numpy("lo")).astype(np.float32),
            "max": np.where(empty, np.nan, self._numpy("hi")).astype(np.float32),
            "frac_active": self._numpy("n_active") / safe * nan,
        }

