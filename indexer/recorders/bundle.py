"""FeatureRecorders: the top-k, quantile samples and stats of one site's features, as one.

One object, one vocabulary: ``topk``, ``samples`` and ``stats`` are the parts (plus
``windows``, the pool of captured quantile-sample windows, ``sample_windows.py``), and update,
merge, state and from_state act on all of them. With the numba backend one fused kernel
(``indexer.recorders.fused``) updates the three in a single pass over each batch; the torch
backend updates them one after another, with identical results.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch

from indexer.recorders import exactsum
from indexer.recorders.common import (
    SHORT_CONTEXT, RecorderError, check_batch, default_backend, feature_chunk, host_tokens, numpy_batch, torch_batch,
)
from indexer.recorders.fused import fused_update
from indexer.recorders.quantiles import QuantileSampler
from indexer.recorders.sample_windows import POOL_PER_SAMPLE, SampleWindows, pool_size
from indexer.recorders.sparse_kernels import sparse_fused_update
from indexer.recorders.stats import Stats
from indexer.recorders.topk import TopK

DEFAULT_QUANTILES = (0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
PARTS: dict[str, type] = {"topk": TopK, "samples": QuantileSampler, "stats": Stats, "windows": SampleWindows}
SWEEP_EVERY = 8  # batches between refreshes of the sample-window caps (and in batches 1, 2 and 4)


class FeatureRecorders:
    """The three recorders of one site's features, sharing one pass over each batch.

    Attributes:
        topk: TopK.  samples: QuantileSampler.  stats: Stats.  (Same n_features, backend.)
    """

    def __init__(self, topk: TopK, samples: QuantileSampler, stats: Stats, windows: SampleWindows | None = None):
        windows = windows or SampleWindows(topk.n_features, 0, topk.backend, topk.device, max_len=topk.max_len)
        sizes = {topk.n_features, samples.n_features, stats.n_features, windows.n_features}
        backends = {(r.backend, r.device) for r in (topk, samples, stats, windows)}
        lengths = {topk.max_len, samples.max_len, windows.max_len}
        if len(sizes) != 1 or len(backends) != 1 or len(lengths) != 1:
            raise RecorderError(f"parts disagree: n_features={sizes}, backend/device={backends}, max_len={lengths}")
        self.topk, self.samples, self.stats, self.windows = topk, samples, stats, windows
        self._updates = 0  # batches since creation or loading: when to sweep the windows pool
        self.n_features = topk.n_features
        self.backend, self.device = topk.backend, topk.device

    @classmethod
    def create(cls, n_features: int, quantiles: Any = DEFAULT_QUANTILES, k: int = 20, per_bin: int = 5,
               salt: int = 0, backend: str | None = None, device: Any = "cpu",
               window: tuple[int, int] = (0, 0), max_len: int = SHORT_CONTEXT,
               pool_per_sample: float = POOL_PER_SAMPLE) -> "FeatureRecorders":
        """Fresh recorders; quantiles: the requested quantile bin edges, ascending in (0, 1);
        window: (before, after), the tokens around each top-k example whose values are kept;
        max_len: the longest context, BOS included (positions are int16 up to SHORT_CONTEXT);
        pool_per_sample: the sample-window pool's entries per quantile sample."""
        backend = backend or default_backend(device)
        samples = QuantileSampler(n_features, quantiles, per_bin, salt, backend, device, max_len)
        return cls(TopK(n_features, k, backend, device, *window, max_len=max_len), samples,
                   Stats(n_features, backend, device),
                   SampleWindows(n_features, pool_size(len(samples.quantiles), per_bin, pool_per_sample), backend, device, *window,
                                 max_len=max_len))

    def parts(self) -> dict[str, Any]:
        return {"topk": self.topk, "samples": self.samples, "stats": self.stats, "windows": self.windows}

    def update(self, acts: torch.Tensor, lengths: torch.Tensor, ctx_ids: torch.Tensor, skip_zeros: bool = False,
               n_tokens: int | None = None) -> None:
        """Record one batch: acts [batch, pos, feat], lengths [batch], ctx_ids [batch].

        ``skip_zeros`` (a sparse site: SAE latents): a token where a feature is exactly zero is
        counted by the stats (n_tokens, mean, std, frac_active: over every token) and in the
        histogram's zero bin, but not binned, sampled or windowed: the quantile bins partition
        the tokens where the feature fires, and the work per zero is a compare. ``n_tokens``:
        the batch's recorded tokens (lengths - 1 each), where the caller counted them on the host:
        counting lengths that live on an accelerator would sync it."""
        check_batch(acts, lengths, ctx_ids, self.n_features, self.samples.max_len)
        refresh = self._updates in (0, 1, 3) or self._updates % SWEEP_EVERY == SWEEP_EVERY - 1
        self._updates += 1
        if self.backend != "numba":
            n_tokens = host_tokens(lengths) if n_tokens is None else n_tokens
            batch = torch_batch(acts, lengths, ctx_ids, self.device)  # one float32 copy for all parts
            if skip_zeros:
                batch = (batch[0] + 0.0, *batch[1:])  # -0.0 -> +0.0, as the sparse kernel reads every zero
            self.topk.update(*batch, skip_zeros=skip_zeros)
            self.stats.update(*batch)
            with torch.no_grad():
                capture = self.windows.capturer(*batch, self.samples)  # refreshed every batch (see there)
            self.samples.update(*batch, offered=capture, skip_zeros=skip_zeros, n_tokens=n_tokens)
            return
        acts, lengths, ctx_ids = numpy_batch(acts, lengths, ctx_ids)
        tk, qs, st, sw = self.topk, self.samples, self.stats, self.windows
        n_values = int(np.maximum(lengths - 1, 0).sum())
        exactsum.check_capacity(n_values)
        qs._count_tokens(n_values)
        sw.bands_for(len(qs.quantiles))
        kernel, lead = fused_update, (acts, lengths, ctx_ids, feature_chunk(self.n_features))
        if skip_zeros:  # the sparse kernel lists the non-zero tokens in parallel token blocks first
            kernel, lead = sparse_fused_update, (*lead, numba.get_num_threads())
        kernel(*lead,
               tk.vals, tk.ctxs, tk.poss,
               np.uint32(qs.seed), qs.keys, qs.fine_counts, qs.terms, qs.per_bin,
               qs.kval, qs.kctx, qs.kpos, qs.kn, qs.squeeze,
               st.count, st.total, st.total_sq, st.lo, st.hi, st.n_active,
               tk.wins, tk.before,
               refresh,
               qs.quantiles, sw.edges, sw.band_cap, sw.vals, sw.ctx, sw.pos, sw.free, sw.top)
        st.normalise()

    def drop_example_state(self) -> None:
        """Free what only feeds the examples once they are collected (``run.examples``): the
        sample-window pool, the kept tokens and the top-k windows. What stays (fine counts,
        stats, top-k entries) writes the feature tables; the recorders can no longer update,
        merge or checkpoint."""
        for part, names in ((self.windows, ("vals", "ctx", "pos", "free", "top")),
                            (self.samples, ("kval", "kctx", "kpos")), (self.topk, ("wins",))):
            for name in names:
                setattr(part, name, None)

    def nbytes(self) -> int:
        """Bytes of recorder state (fixed at creation: it does not grow with the stream)."""
        total = 0
        for part in self.parts().values():
            for name in part.arrays:
                a = getattr(part, name)
                total += a.nbytes if isinstance(a, np.ndarray) else a.element_size() * a.numel()
        return total

    def merge(self, other: "FeatureRecorders") -> None:
        for name, part in self.parts().items():
            if name != "windows":
                part.merge(other.parts()[name])
        self.windows.merge_with(other.windows, self.samples)  # needs the merged samples

    def state(self, copy: bool = True) -> dict[str, np.ndarray]:
        """The parts' states, keys prefixed 'topk/', 'samples/', 'stats/' (``copy=False``:
        ``Recorder.state``)."""
        return {f"{name}/{k}": v for name, part in self.parts().items() for k, v in part.state(copy).items()}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], backend: str | None = None,
                   device: Any = "cpu") -> "FeatureRecorders":
        parts = {}
        for name, kind in PARTS.items():
            prefix = name + "/"
            if name == "windows" and not any(k.startswith(prefix) for k in state):
                continue  # a state without a windows pool: an empty one
            parts[name] = kind.from_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                                          backend, device)
        return cls(**parts)


def warm_up() -> None:
    """Compile (or load from numba's cache) every numba kernel, e.g. before a progress bar."""
    acts = torch.zeros(1, 2, 1)
    lengths, ctx_ids = torch.tensor([2]), torch.tensor([0])
    fused = FeatureRecorders.create(1, (0.5,), 1, 1, 0, "numba", window=(1, 1))
    fused.update(acts, lengths, ctx_ids)
    for rec in (fused.topk, fused.samples, fused.stats):
        rec.update(acts, lengths, ctx_ids)
        rec.merge(rec)
    fused.merge(fused)  # the window pool's merge
