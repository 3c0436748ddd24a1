"""Per-feature quantile edges from a warm-up sample, for QuantileSampler."""

from __future__ import annotations

from typing import Sequence

import torch

from indexer.recorders.common import RecorderError

MAX_SORT_ELEMENTS = 1 << 24  # sort this many values at a time


def estimate_edges(sample: torch.Tensor, quantiles: Sequence[float] | torch.Tensor,
                   max_elements: int = MAX_SORT_ELEMENTS) -> torch.Tensor:
    """float32 [feat, Q] edges from sample [tokens, feat], non-decreasing along Q.

    Linear interpolation between order statistics, as torch.quantile's default, computed
    in float64 over chunks of features (torch.quantile refuses large inputs). The sample
    must be finite.

    >>> estimate_edges(torch.arange(5.0)[:, None], [0.5, 0.9]).tolist()
    [[2.0, 3.5999999046325684]]
    """
    q = torch.as_tensor(quantiles, dtype=torch.float64, device=sample.device).flatten()
    if sample.ndim != 2 or sample.shape[0] == 0:
        raise RecorderError(f"sample shape={tuple(sample.shape)} but expected [tokens > 0, feat]")
    if q.numel() and (q.min() < 0 or q.max() > 1 or (q.diff() < 0).any()):
        raise RecorderError(f"quantiles={q.tolist()} but expected ascending values in [0, 1]")
    n_tokens, n_feat = sample.shape
    rank = q * (n_tokens - 1)
    below, above = rank.floor().long(), rank.ceil().long()
    weight = (rank - below)[:, None]  # [Q, 1]
    step = max(1, max_elements // n_tokens)
    parts = []
    for f0 in range(0, n_feat, step):
        s = sample[:, f0:f0 + step].double().sort(dim=0).values  # [tokens, chunk]
        parts.append(torch.lerp(s[below], s[above], weight))  # [Q, chunk]
    edges = torch.cat(parts, dim=1).T if parts else torch.zeros(n_feat, q.numel(), dtype=torch.float64)
    if edges.shape[1]:
        edges = torch.cummax(edges, dim=1).values
    return edges.to(torch.float32).contiguous()
