"""What the exporters read: one feature (a neuron, an SAE latent or one metric of a head) with
its stats, quantile bins and examples, as the index holds them.

Rules every format shares (the README's "Exports" section):
- a window never carries the BOS position (position 0): the index never records it, and a
  model's activation there (an attention sink) would otherwise pass for the feature's maximum;
  HeadVis keeps it (attention to BOS is part of a head's pattern);
- a token the feature did not see (NaN: a mixture-of-experts neuron on a token routed
  elsewhere) is written as 0, since JSON has no NaN;
- values are the index's float32 values, written as the float64 that holds them exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Site:
    """A family of features: a neuron site (``mlp_post``, ``sae:NAME``) or one head metric
    (``heads/max_attn``), each read from its pair of tables."""

    name: str

    @property
    def head(self) -> bool:
        return self.name.startswith("heads/")

    @property
    def sae(self) -> bool:
        return self.name.startswith("sae:")

    @property
    def metric(self) -> str:
        return self.name.split("/", 1)[1]

    @property
    def tables(self) -> tuple[str, str, str, str, str]:
        """(stats view, examples view, feature column, filter column, filter value)."""
        if self.head:
            return "heads", "head_examples", "head", "metric", self.metric
        return "neurons", "examples", "neuron", "site", self.name


@dataclass(frozen=True)
class Example:
    """One example: the feature's value at ``pos`` of context ``ctx_id``, and its window.

    ``start`` is the context position of ``token_ids[0]``; ``values[i]`` is the feature's value
    at ``token_ids[i]``; ``kind`` is 'top' (bin -1) or 'quantile'; ``rank`` 0 is the highest.
    """

    kind: str
    bin: int
    rank: int
    activation: float
    ctx_id: int
    pos: int
    start: int
    token_ids: list[int]
    values: list[float]

    @property
    def at(self) -> int:
        """The index of the example's own token in ``token_ids``."""
        return self.pos - self.start

    def cut(self, limit: int | None = None, keep_bos: bool = False) -> "Example":
        """The window without BOS (unless ``keep_bos``), NaN written as 0, and at most ``limit``
        tokens: the example's token, a quarter of the limit after it at most, the rest before.

        >>> Example("top", -1, 0, 2.0, 7, 3, 0, [0, 5, 6, 7, 8], [9.0, 1.0, float("nan"), 2.0, 0.5]).cut(3)
        Example(kind='top', bin=-1, rank=0, activation=2.0, ctx_id=7, pos=3, start=1, token_ids=[5, 6, 7], values=[1.0, 0.0, 2.0])
        """
        start, ids, values = self.start, self.token_ids, self.values
        if start == 0 and not keep_bos and len(ids) > 1:
            start, ids, values = 1, ids[1:], values[1:]
        if limit is not None and len(ids) > limit:
            end = start + len(ids)
            after = min(end - self.pos - 1, limit // 4)
            first = max(start, self.pos + after + 1 - limit)
            ids, values = ids[first - start: first - start + limit], values[first - start: first - start + limit]
            start = first
        return replace(self, start=start, token_ids=list(ids), values=[0.0 if v != v else v for v in values])


@dataclass(frozen=True)
class Bin:
    """A quantile bin: values in [lo, hi) (the last bin: [lo, hi]); ``share`` = count / n_tokens."""

    index: int
    lo: float
    hi: float
    count: int
    share: float


@dataclass(frozen=True)
class Feature:
    """One feature with everything the index holds about it.

    ``stats`` is its row of ``neurons`` (or ``heads``); ``examples`` are top examples by rank,
    then quantile samples by bin and rank; ``logits`` = (boosted, suppressed) tokens as
    (token_str, value) pairs when ``neuroscope analyze`` wrote them, else None.
    """

    site: Site
    layer: int
    index: int
    stats: dict[str, Any]
    examples: list[Example]
    logits: tuple[list[tuple[str, float]], list[tuple[str, float]]] | None = None

    @property
    def top(self) -> list[Example]:
        return [e for e in self.examples if e.kind == "top"]

    @property
    def quantiles(self) -> list[Example]:
        return [e for e in self.examples if e.kind == "quantile"]

    def bins(self) -> list[Bin]:
        """The quantile bins: edges from ``quantile_edges``, the outer bounds from min and max.

        For an SAE latent the bins partition the tokens where it fires (zeros are counted,
        not binned), so the shares sum to its firing share."""
        edges = list(self.stats["quantile_edges"])
        counts = list(self.stats["bin_counts"])
        shares = self.stats.get("bin_shares")
        n = int(self.stats["n_tokens"]) or 1
        bounds = [float(self.stats["min"]), *map(float, edges), float(self.stats["max"])]
        return [Bin(b, bounds[b], bounds[b + 1], int(c), float(shares[b]) if shares is not None else c / n)
                for b, c in enumerate(counts)]

    def moments(self) -> tuple[float | None, float | None]:
        """(skewness, excess kurtosis) from the stored histogram's bin midpoints about the exact
        mean and std: approximate, since values are known only to their bin. None if undefined."""
        hist, edges = self.stats.get("hist"), self.stats.get("hist_edges")
        mean, std = float(self.stats["mean"]), float(self.stats["std"])
        if hist is None or edges is None or not (std > 0 and math.isfinite(mean)) or not sum(hist):
            return None, None
        n = sum(hist)
        mids = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        m3 = sum(c * (x - mean) ** 3 for c, x in zip(hist, mids)) / n
        m4 = sum(c * (x - mean) ** 4 for c, x in zip(hist, mids)) / n
        return m3 / std**3, m4 / std**4 - 3.0


def strings(ids: list[int], vocab: list[str]) -> list[str]:
    """The token strings of ``ids``, exactly as the index's vocab holds them ('' for an id
    beyond it)."""
    n = len(vocab)
    return [vocab[i] if 0 <= i < n else "" for i in ids]


def finite(value: Any) -> float | None:
    """A float, or None for NaN, infinity or a missing value (JSON has none of them)."""
    return float(value) if value is not None and math.isfinite(float(value)) else None
