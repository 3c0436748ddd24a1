"""The recorders of every indexed site, together: update, merge, save and load as one.

Each site gets one recorder per statistic (top-k, quantile samples, stats); their states are
saved into one ``.npz`` per run state, keyed ``"<site>/<layer>/<recorder>/<array>"``.
"""

from __future__ import annotations

import io
import zlib
from typing import Any

import numpy as np

from indexer.recorders import NeuronRecorders, QuantileSampler, Stats, TopK, default_backend
from indexer.sites import Site

RECORDERS = {"topk": TopK, "samples": QuantileSampler, "stats": Stats}


def site_salt(seed: int, site: Site) -> int:
    """The sampling salt of a site: differs per site, fixed by the seed."""
    return zlib.crc32(f"{seed}:{site.key}".encode()) & 0x7FFFFFFF


class SiteRecorders:
    """Top-k, quantile samples and stats of one site."""

    def __init__(self, site: Site, parts: dict[str, Any]):
        self.site = site
        self.topk: TopK = parts["topk"]
        self.samples: QuantileSampler = parts["samples"]
        self.stats: Stats = parts["stats"]
        # One pass (one parallel region) over each batch for all three; shares their state.
        self._fused = NeuronRecorders(self.topk, self.samples, self.stats)

    @classmethod
    def new(cls, site: Site, edges: np.ndarray, top_k: int, per_bin: int, seed: int, device: str) -> "SiteRecorders":
        backend = default_backend(device)
        return cls(
            site,
            {
                "topk": TopK(site.n_features, k=top_k, backend=backend, device=device),
                "samples": QuantileSampler(
                    site.n_features, edges, per_bin=per_bin, salt=site_salt(seed, site), backend=backend, device=device
                ),
                "stats": Stats(site.n_features, backend=backend, device=device),
            },
        )

    def parts(self) -> dict[str, Any]:
        return {"topk": self.topk, "samples": self.samples, "stats": self.stats}

    def update(self, acts: Any, lengths: Any, ctx_ids: Any) -> None:
        """acts: [batch, pos, feat] float32; lengths, ctx_ids: [batch] int64."""
        self._fused.update(acts, lengths, ctx_ids)

    def merge(self, other: "SiteRecorders") -> None:
        for name, recorder in self.parts().items():
            recorder.merge(other.parts()[name])


def save_states(recorders: list[SiteRecorders], extra: dict[str, np.ndarray]) -> bytes:
    """All recorder states (and ``extra`` arrays) as the bytes of one .npz file."""
    arrays = dict(extra)
    for rec in recorders:
        for name, recorder in rec.parts().items():
            for key, value in recorder.state().items():
                arrays[f"{rec.site.key}/{name}/{key}"] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def load_states(data: bytes, plan: list[Site], device: str) -> tuple[list[SiteRecorders], dict[str, np.ndarray]]:
    """Recorders for ``plan`` from bytes written by ``save_states``, and the extra arrays."""
    with np.load(io.BytesIO(data)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    backend = default_backend(device)
    recorders = []
    for site in plan:
        parts = {}
        for name, cls in RECORDERS.items():
            prefix = f"{site.key}/{name}/"
            state = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            parts[name] = cls.from_state(state, backend=backend, device=device)
        recorders.append(SiteRecorders(site, parts))
    extra = {k: v for k, v in arrays.items() if k.count("/") < 3}
    return recorders, extra
