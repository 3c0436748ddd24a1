"""Features side by side (``?page=compare``): what a side is, as a URL names it, and how much
two features' top contexts overlap. No Streamlit here (``viewer.page_compare`` draws it).

A side is ``IX:SITE:LAYER:N``: the index's name in the viewer (``viewer.indexes``), the site
(``mlp_post``, ``sae:NAME``..., or ``heads/METRIC`` for a head metric), the layer and the
neuron, latent or head. Examples:

    ?page=compare&f=demo:mlp_post:0:7&f=demo-code:mlp_post:0:7        one neuron, two corpora
    ?page=compare&f=solu:mlp_pre:0:5&f=solu:mlp_mid:0:5&f=solu:mlp_post:0:5   SoLU pre/mid/post

Two top contexts are the same context when their token ids are the same (a context's ctx_id
means nothing in another index), so the overlap compares indexes of one model over shared text
as well as two sites of one index.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from indexer.errors import NeuroscopeError

HEADS = "heads/"
MAX_SIDES = 4


class BadSide(NeuroscopeError):
    """A side of the compare page that the URL names badly (shown to the user)."""


@dataclass(frozen=True)
class Side:
    ix: str
    site: str  # a neuron site, or "heads/METRIC"
    layer: int
    n: int  # neuron, latent or head

    @property
    def is_head(self) -> bool:
        return self.site.startswith(HEADS)

    @property
    def metric(self) -> str:
        return self.site[len(HEADS):]

    def label(self, several_indexes: bool) -> str:
        what = (f"head {self.layer}.{self.n} · {self.metric}" if self.is_head
                else f"{self.site} · layer {self.layer} · {'latent' if self.site.startswith('sae:') else 'neuron'} {self.n}")
        return f"{self.ix} · {what}" if several_indexes else what

    def text(self) -> str:
        return f"{self.ix}:{self.site}:{self.layer}:{self.n}"


def parse(text: str) -> Side:
    """``IX:SITE:LAYER:N`` (SITE may hold a colon, as ``sae:NAME`` does)."""
    parts = str(text).rsplit(":", 2)
    if len(parts) != 3 or ":" not in parts[0]:
        raise BadSide(f"compare: {text!r} is not IX:SITE:LAYER:N (for example demo:mlp_post:0:7)")
    ix, site = parts[0].split(":", 1)
    try:
        layer, n = int(parts[1]), int(parts[2])
    except ValueError:
        raise BadSide(f"compare: {text!r}: layer and number must be whole numbers") from None
    if not ix or not site or layer < 0 or n < 0:
        raise BadSide(f"compare: {text!r} is not IX:SITE:LAYER:N (for example demo:mlp_post:0:7)")
    return Side(ix, site, layer, n)


def context_key(token_ids: np.ndarray) -> str:
    """The identity of a context across indexes: a digest of its token ids."""
    return hashlib.blake2b(np.asarray(token_ids, dtype=np.int64).tobytes(), digest_size=12).hexdigest()


def overlap(a: set[str], b: set[str]) -> float | None:
    """Share of the smaller set of top contexts that the other also holds (None: one is empty)."""
    if not a or not b:
        return None
    return len(a & b) / min(len(a), len(b))


def shared_domain(stats: list[dict]) -> tuple[float, float] | None:
    """One value axis for every side's histogram: from the smallest min to the largest max."""
    lo = [float(s["min"]) for s in stats if s.get("min") is not None and np.isfinite(float(s["min"]))]
    hi = [float(s["max"]) for s in stats if s.get("max") is not None and np.isfinite(float(s["max"]))]
    if not lo or not hi:
        return None
    low, high = min(lo), max(hi)
    return (low, high) if high > low else (low - 1, high + 1)
