"""NeuronRecorders: TopK + QuantileSampler + Stats of one site, updated in a single pass.

With the numba backend one kernel (one parallel region) walks the activations once,
running the three recorders' row functions on each row chunk; the results are identical
to updating the three recorders one after another (which the torch backend does). The
work is compute-bound, so on a CPU this saves the extra passes and thread wake-ups, not
arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from indexer.recorders.common import NJIT_OPTIONS, RecorderError, check_batch, feature_chunk, numpy_batch
from indexer.recorders.hashing import context_hash_nb, token_hash_nb
from indexer.recorders.quantile_kernels import quantile_begin, quantile_end, quantile_row
from indexer.recorders.quantiles import QuantileSampler
from indexer.recorders.stats import Stats
from indexer.recorders.stats_kernels import stats_row, stats_views
from indexer.recorders.topk import TopK
from indexer.recorders.topk_kernels import topk_begin, topk_end, topk_row

PARTS = ("topk", "quantiles", "stats")


class NeuronRecorders:
    """The three neuron recorders of one site, sharing one pass over each batch.

    Attributes:
        topk: TopK.  quantiles: QuantileSampler.  stats: Stats.  (Same n_features, backend.)
    """

    def __init__(self, topk: TopK, quantiles: QuantileSampler, stats: Stats):
        sizes = {topk.n_features, quantiles.n_features, stats.n_features}
        backends = {(r.backend, r.device) for r in (topk, quantiles, stats)}
        if len(sizes) != 1 or len(backends) != 1:
            raise RecorderError(f"parts disagree: n_features={sizes}, backend/device={backends}")
        self.topk, self.quantiles, self.stats = topk, quantiles, stats
        self.n_features = topk.n_features
        self.backend, self.device = topk.backend, topk.device

    @classmethod
    def create(cls, n_features: int, edges, k: int = 20, per_bin: int = 5, salt: int = 0,
               backend: str | None = None, device="cpu") -> "NeuronRecorders":
        """Fresh recorders; edges float32 [feat, Q] as from `estimate_edges`."""
        return cls(TopK(n_features, k, backend, device),
                   QuantileSampler(n_features, edges, per_bin, salt, backend, device),
                   Stats(n_features, backend, device))

    def update(self, acts: torch.Tensor, lengths: torch.Tensor, ctx_ids: torch.Tensor) -> None:
        """Record one batch: acts [batch, pos, feat], lengths [batch], ctx_ids [batch]."""
        if self.backend != "numba":
            for part in PARTS:
                getattr(self, part).update(acts, lengths, ctx_ids)
            return
        check_batch(acts, lengths, ctx_ids, self.n_features)
        acts, lengths, ctx_ids = numpy_batch(acts, lengths, ctx_ids)
        tk, qs, st = self.topk, self.quantiles, self.stats
        st.count += int(np.maximum(lengths - 1, 0).sum())
        fused_update(acts, lengths, ctx_ids, feature_chunk(self.n_features),
                     tk.vals, tk.ctxs, tk.poss,
                     np.uint32(qs.seed), qs.keys, qs._edges, qs.bin_counts,
                     qs.prio, qs.vals, qs.ctxs, qs.poss,
                     st.total, st.total_sq, st.lo, st.hi, st.n_active, st.hist)

    def merge(self, other: "NeuronRecorders") -> None:
        for part in PARTS:
            getattr(self, part).merge(getattr(other, part))

    def state(self) -> dict[str, np.ndarray]:
        """The parts' states, keys prefixed 'topk.', 'quantiles.', 'stats.'."""
        return {f"{part}.{k}": v for part in PARTS for k, v in getattr(self, part).state().items()}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], backend: str | None = None,
                   device="cpu") -> "NeuronRecorders":
        parts = {}
        for part, kind in zip(PARTS, (TopK, QuantileSampler, Stats)):
            sub = {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
            parts[part] = kind.from_state(sub, backend, device)
        return cls(**parts)


@njit(parallel=True, **NJIT_OPTIONS)
def fused_update(acts, lengths, ctx_ids, chunk, tk_vals, tk_ctxs, tk_poss,
                 seed, keys, edges, counts, prio, s_vals, s_ctxs, s_poss,
                 total, total_sq, lo, hi, n_active, hist):
    """acts float32 [batch, pos, feat]; the three recorders' arrays, updated in place."""
    n_batch, _, n_feat = acts.shape
    bits = acts.view(np.int32)
    n_tokens = 0
    for b in range(n_batch):
        n_tokens += max(lengths[b] - 1, 0)
    for c in prange((n_feat + chunk - 1) // chunk):
        f0 = c * chunk
        n = min(chunk, n_feat - f0)
        f1 = f0 + n
        best = np.empty(n, np.float32)
        best_pos = np.empty(n, np.int32)
        scratch = np.empty(n, np.int32)
        e, k, thr, hashes, hit, above = quantile_begin(f0, n, edges, keys, prio)
        tv, sv, lv, hv, av, histv = stats_views(f0, n, total, total_sq, lo, hi, n_active, hist)
        for b in range(n_batch):
            if lengths[b] <= 1:
                continue
            topk_begin(best, best_pos)
            ch = context_hash_nb(seed, ctx_ids[b])
            for t in range(1, lengths[b]):
                x = acts[b, t, f0:f1]
                topk_row(x, t, best, best_pos)
                stats_row(x, bits[b, t, f0:f1], tv, sv, lv, hv, av, histv, scratch)
                quantile_row(x, t, f0, ctx_ids[b], token_hash_nb(ch, t), e, k, thr, hashes, hit,
                             above, prio, s_vals, s_ctxs, s_poss)
            topk_end(f0, n, ctx_ids[b], best, best_pos, tk_vals, tk_ctxs, tk_poss)
        quantile_end(f0, n, n_tokens, above, counts)


def warm_up() -> None:
    """Compile (or load from numba's cache) every numba kernel, e.g. before a progress bar."""
    acts = torch.zeros(1, 2, 1)
    lengths, ctx_ids = torch.tensor([2]), torch.tensor([0])
    fused = NeuronRecorders.create(1, np.zeros((1, 1), np.float32), 1, 1, 0, "numba")
    fused.update(acts, lengths, ctx_ids)
    for part in PARTS:
        rec = getattr(fused, part)
        rec.update(acts, lengths, ctx_ids)
        rec.merge(rec)
