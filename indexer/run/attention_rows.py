"""Attention rows of head examples, cut from the stream's own attention patterns.

The ``head_attention`` table holds, for every head example, where its destination token
attends (``indexer.run.head_attention``). While streaming, each heads site's recorders fold
a batch from inside the forward pass, while the layer's attention pattern [batch, head, q, k]
still exists; right after, every top-k entry and sample-window pool entry that came from
this batch (its context is in the batch) gets its row cut: the weights >= THRESHOLD, largest
first, at most MAX_SOURCES (``sparse_rows``). Rows depend on (layer, head, ctx_id, pos) only,
so the four metrics of a head share them. Entries evicted later leave rows behind; they are
pruned whenever the rows outnumber the live entries by far. Finalize looks each head example's row
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


def sparse_rows(dense: np.ndarray, poss: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each destination's attention weights dense[i] over its sources 0..poss[i], sparse: the
    weights >= THRESHOLD, largest first (earlier source on ties), at most MAX_SOURCES. Returns
    src_pos int32 [n, MAX_SOURCES], weights float32 [n, MAX_SOURCES] and how many of each row
    are real, int64 [n]."""
    n = dense.shape[0]
    r, c = np.nonzero((dense >= THRESHOLD) & (np.arange(dense.shape[1])[None, :] <= poss[:, None]))
    w = dense[r, c]  # at most 1 / THRESHOLD per row: the weights sum to 1
    order = np.lexsort((c, -w, r))  # by row, then weight descending, then source
    r, c, w = r[order], c[order], w[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r)
    keep = rank < MAX_SOURCES
    src = np.zeros((n, MAX_SOURCES), np.int32)
    weights = np.zeros((n, MAX_SOURCES), np.float32)
    src[r[keep], rank[keep]] = c[keep]
    weights[r[keep], rank[keep]] = w[keep]
    return src, weights, np.bincount(r[keep], minlength=n)


def cut_rows(pattern: Any, rows: np.ndarray, heads: np.ndarray, poss: np.ndarray):
    """sparse_rows of pattern [batch, head, q, k] (a torch tensor) at (rows[i], heads[i], poss[i])."""
    import torch

    index = [torch.as_tensor(a, dtype=torch.long, device=pattern.device) for a in (rows, heads, poss)]
    return sparse_rows(pattern[index[0], index[1], index[2]].float().cpu().numpy(), np.asarray(poss))


class AttentionRows:
    """The rows captured so far, keyed (layer, head, ctx_id, pos), in preallocated arrays: many
    small long-lived arrays between each batch's large transient ones fragment the C heap
    (peak RSS grew by 1.5 GB over 1M tokens of toy-1l that way)."""

    def __init__(self, capacity: int = PRUNE_AT) -> None:
        self.slot: dict[Key, int] = {}
        self.src = np.zeros((capacity, MAX_SOURCES), np.int32)
        self.weights = np.zeros((capacity, MAX_SOURCES), np.float32)
        self.count = np.zeros(capacity, np.int64)
        self._limit = PRUNE_AT

    def __len__(self) -> int:
        return len(self.slot)

    def capture(self, site: Site, rec: Any, ctx_ids: np.ndarray, pattern: Any, all_sites: dict) -> None:
        """After ``rec`` (a heads site's FeatureRecorders) folded the batch of ``ctx_ids``
        (int64 [batch]): cut the rows of its entries from this batch out of ``pattern``."""
        keys = list(dict.fromkeys(key for key in _entries(site, rec, ctx_ids) if key not in self.slot))
        if not keys:
            return
        row_of = {int(c): i for i, c in enumerate(ctx_ids)}
        src, weights, count = cut_rows(pattern, np.array([row_of[k[2]] for k in keys]),
                                       np.array([k[1] for k in keys]), np.array([k[3] for k in keys]))
        self._store(keys, src, weights, count)
        if len(self.slot) > self._limit:
            self.prune(all_sites)

    def add(self, keys: list[Key], src: np.ndarray, weights: np.ndarray, count: np.ndarray) -> None:
        """Rows cut elsewhere (finalize's re-runs, ``cut_rows``' output) for keys not held yet."""
        new = [i for i, key in enumerate(keys) if key not in self.slot]
        if new:
            self._store([keys[i] for i in new], src[new], weights[new], count[new])

    def _store(self, keys: list[Key], src: np.ndarray, weights: np.ndarray, count: np.ndarray) -> None:
        at = len(self.slot)
        if at + len(keys) > len(self.count):
            self._resize(max(2 * len(self.count), at + len(keys)))
        new = slice(at, at + len(keys))
        self.src[new], self.weights[new], self.count[new] = src, weights, count
        self.slot.update(zip(keys, range(new.start, new.stop)))

    def _resize(self, capacity: int, keep: np.ndarray | None = None) -> None:
        keep = np.arange(len(self.slot)) if keep is None else keep
        for name in ("src", "weights", "count"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), old.dtype)
            new[:len(keep)] = old[keep]
            setattr(self, name, new)

    def prune(self, recorders: dict) -> None:
        """Keep only the rows of entries the heads sites' recorders still hold."""
        live = {key for site, rec in recorders.items() if site.name == "heads" for key in _entries(site, rec, None)}
        kept = [(k, i) for k, i in self.slot.items() if k in live]
        self._resize(max(len(kept), PRUNE_AT), np.array([i for _, i in kept], np.int64))
        self.slot = {k: j for j, (k, _) in enumerate(kept)}
        self._limit = 2 * len(live) + PRUNE_AT

    def get(self, key: Key) -> tuple[np.ndarray, np.ndarray] | None:
        """(src_pos int32, weights float32) of a captured row, or None."""
        i = self.slot.get(key)
        if i is None:
            return None
        n = self.count[i]
        return self.src[i, :n].copy(), self.weights[i, :n].copy()


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
