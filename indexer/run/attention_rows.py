"""Attention rows of head examples, cut from the stream's own attention patterns.

The ``head_attention`` table holds, for every head example, where its destination token
attends (``indexer.run.head_attention``). While streaming, each heads site's recorders fold
a batch from inside the forward pass, while the layer's attention pattern [batch, head, q, k]
still exists; right after, every top-k entry and sample-window pool entry that came from
this batch (its context is in the batch) gets its row cut: the weights >= THRESHOLD, largest
first, at most MAX_SOURCES. Rows depend on (layer, head, ctx_id, pos) only, so the four
metrics of a head share them. Entries evicted later leave rows behind; they are pruned
whenever the rows outnumber the live entries by far. Finalize looks each head example's row
up here and runs the model only for the rest (samples the pool missed, and all of them after
a resume or a merge: rows are not checkpointed). A row is the same whichever way it is made:
the re-run uses the stream's batch shape and ``SiteForward``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.forward.sites import HEAD_METRICS, Site

THRESHOLD = 0.01  # attention weights below this are not stored
MAX_SOURCES = 32  # per example, the largest weights first
PRUNE_AT = 4096  # rows beyond the live entries' count before a prune is considered

Key = tuple[int, int, int, int]  # (layer, head, ctx_id, pos)


def sparse_row(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(src_pos int32, weights float32) of one destination's attention weights over its
    sources 0..pos: those >= THRESHOLD, largest first (earlier source on ties), at most
    MAX_SOURCES."""
    keep = np.flatnonzero(weights >= THRESHOLD)
    keep = keep[np.argsort(-weights[keep], kind="stable")][:MAX_SOURCES]
    return keep.astype(np.int32), weights[keep].astype(np.float32)


def cut_rows(pattern: Any, rows: np.ndarray, heads: np.ndarray, poss: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sparse rows of pattern [batch, head, q, k] (a torch tensor) at (rows[i], heads[i], poss[i])."""
    import torch

    if len(rows) == 0:
        return []
    index = [torch.as_tensor(a, dtype=torch.long, device=pattern.device) for a in (rows, heads, poss)]
    dense = pattern[index[0], index[1], index[2]].float().cpu().numpy()  # [n, k]
    return [sparse_row(dense[i, : int(p) + 1]) for i, p in enumerate(poss)]


class AttentionRows:
    """The rows captured so far, keyed (layer, head, ctx_id, pos)."""

    def __init__(self) -> None:
        self.rows: dict[Key, tuple[np.ndarray, np.ndarray]] = {}
        self._limit = PRUNE_AT

    def capture(self, site: Site, rec: Any, ctx_ids: np.ndarray, pattern: Any, all_sites: dict) -> None:
        """After ``rec`` (a heads site's FeatureRecorders) folded the batch of ``ctx_ids``
        (int64 [batch]): cut the rows of its entries from this batch out of ``pattern``."""
        new = [key for key in _entries(site, rec, ctx_ids) if key not in self.rows]
        if not new:
            return
        row_of = {int(c): i for i, c in enumerate(ctx_ids)}
        keys = list(dict.fromkeys(new))
        cut = cut_rows(pattern, np.array([row_of[k[2]] for k in keys]), np.array([k[1] for k in keys]),
                       np.array([k[3] for k in keys]))
        self.rows.update(zip(keys, cut))
        if len(self.rows) > self._limit:
            self.prune(all_sites)

    def prune(self, recorders: dict) -> None:
        """Keep only the rows of entries the heads sites' recorders still hold."""
        live = {key for site, rec in recorders.items() if site.name == "heads" for key in _entries(site, rec, None)}
        self.rows = {k: v for k, v in self.rows.items() if k in live}
        self._limit = 2 * len(live) + PRUNE_AT

    def get(self, key: Key) -> tuple[np.ndarray, np.ndarray] | None:
        return self.rows.get(key)


def _entries(site: Site, rec: Any, ctx_ids: np.ndarray | None) -> list[Key]:
    """(layer, head, ctx_id, pos) of the site's top-k and pool entries (only those whose
    context is in ``ctx_ids`` if given)."""
    out: list[Key] = []
    for ctxs, poss in ((rec.topk._numpy("ctxs"), rec.topk._numpy("poss")),
                       (rec.windows._numpy("ctx"), rec.windows._numpy("pos"))):
        mask = ctxs >= 0 if ctx_ids is None else np.isin(ctxs, ctx_ids)
        feature, slot = np.nonzero(mask)
        heads = feature // len(HEAD_METRICS)
        out.extend(zip([site.layer] * len(heads), heads.tolist(), ctxs[feature, slot].tolist(),
                       poss[feature, slot].tolist()))
    return out
