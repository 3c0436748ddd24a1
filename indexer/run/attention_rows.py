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

On an accelerator the rows are cut there, without a host sync: every entry's row of the
batch is gathered and its largest weights picked by a ``topk`` of (weight, source) keys
(the same rows ``sparse_rows`` cuts), copied to the host without waiting, and stored a
batch later, when the copy is done (``flush`` waits for the rest, at the end of the
stream).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from indexer.forward.sites import HEAD_METRICS, Site

THRESHOLD = 0.01  # attention weights below this are not stored
MAX_SOURCES = 32  # per example, the largest weights first
PRUNE_AT = 4096  # rows beyond the live entries' count before a prune is considered
CUT_ON_DEVICE = False  # cut rows as on an accelerator even on the CPU (tests)
SOURCE_BITS = 20  # a row's (weight, source) key: the weight's float32 bits, then 2**20 - 1 - source

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
        self._pending: list[tuple[int, Any, list[Any]]] = []  # rows cut on an accelerator, being copied

    def __len__(self) -> int:
        return len(self.slot)

    def capture(self, site: Site, rec: Any, ctx_ids: np.ndarray, pattern: Any, all_sites: dict,
                batch_ctx_ids: Any = None) -> None:
        """After ``rec`` (a heads site's FeatureRecorders) folded the batch of ``ctx_ids``
        (int64 [batch]; ``batch_ctx_ids``: the same on the pattern's device): cut the rows of
        its entries from this batch out of ``pattern``."""
        if pattern.device.type != "cpu" or CUT_ON_DEVICE:
            self._store_ready()
            if batch_ctx_ids is None:
                batch_ctx_ids = torch.as_tensor(ctx_ids, device=pattern.device)
            self._pending.append((site.layer, *_cut_on_device(rec, batch_ctx_ids, pattern)))
            if len(self.slot) > self._limit:
                self.prune(all_sites)
            return
        keys = list(dict.fromkeys(key for key in _entries(site, rec, ctx_ids) if key not in self.slot))
        if not keys:
            return
        row_of = {int(c): i for i, c in enumerate(ctx_ids)}
        src, weights, count = cut_rows(pattern, np.array([row_of[k[2]] for k in keys]),
                                       np.array([k[1] for k in keys]), np.array([k[3] for k in keys]))
        self._store(keys, src, weights, count)
        if len(self.slot) > self._limit:
            self.prune(all_sites)

    def _store_ready(self, wait: bool = False) -> None:
        """Store the rows cut on an accelerator whose copies are done (``wait``: all of them)."""
        while self._pending:
            layer, event, host = self._pending[0]
            if event is not None and not wait and not event.query():
                return  # later ones were queued after it
            if event is not None:
                event.synchronize()
            self._pending.pop(0)
            in_batch, ctx, pos, src, weights, count = (t.numpy() for t in host)
            f, j = np.nonzero(in_batch)
            keys = list(zip([layer] * len(f), (f // len(HEAD_METRICS)).tolist(), ctx[f, j].tolist(), pos[f, j].tolist()))
            first = {}
            for i, key in enumerate(keys):
                if key not in self.slot:
                    first.setdefault(key, i)
            at = np.fromiter(first.values(), np.int64, len(first))
            if len(at):
                self._store(list(first), src[f[at], j[at]], weights[f[at], j[at]], count[f[at], j[at]])

    def flush(self) -> None:
        """Wait for the rows still being copied from an accelerator, and store them."""
        self._store_ready(wait=True)

    def add(self, keys: list[Key], src: np.ndarray, weights: np.ndarray, count: np.ndarray) -> None:
        """Rows cut elsewhere (finalize's re-runs, ``cut_rows``' output) for keys not held yet."""
        self.flush()
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
        self.flush()
        live = {key for site, rec in recorders.items() if site.name == "heads" for key in _entries(site, rec, None)}
        kept = [(k, i) for k, i in self.slot.items() if k in live]
        self._resize(max(len(kept), PRUNE_AT), np.array([i for _, i in kept], np.int64))
        self.slot = {k: j for j, (k, _) in enumerate(kept)}
        self._limit = 2 * len(live) + PRUNE_AT

    def get(self, key: Key) -> tuple[np.ndarray, np.ndarray] | None:
        """(src_pos int32, weights float32) of a captured row, or None."""
        if self._pending:
            self.flush()
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


def _cut_on_device(rec: Any, batch_ctx_ids: Any, pattern: Any) -> tuple[Any, list[Any]]:
    """The rows of all of ``rec``'s top-k and pool entries [feat, m] out of ``pattern``, on its
    device, sparse as ``sparse_rows`` cuts them, and whether each entry's context is in the
    batch; copied to the host without waiting. Returns (the copy's CUDA event or None,
    [in_batch, ctx, pos, src, weights, count] on the host)."""
    device = pattern.device
    ctx = torch.cat([torch.as_tensor(rec.topk.ctxs), torch.as_tensor(rec.windows.ctx)], 1).to(device, torch.int64)
    pos = torch.cat([torch.as_tensor(rec.topk.poss), torch.as_tensor(rec.windows.pos)], 1).to(device, torch.int64)
    here = ctx[..., None] == batch_ctx_ids.to(torch.int64)  # [feat, m, batch]
    in_batch, row = here.any(-1), here.to(torch.int32).argmax(-1)
    head = torch.arange(ctx.shape[0], device=device)[:, None] // len(HEAD_METRICS)
    q = pos.clamp(min=0, max=pattern.shape[2] - 1)
    n_src = pattern.shape[3]
    source = torch.arange(n_src, device=device)
    width = min(MAX_SOURCES, n_src)
    src = torch.zeros((*ctx.shape, MAX_SOURCES), dtype=torch.int32, device=device)
    weights = torch.zeros((*ctx.shape, MAX_SOURCES), dtype=torch.float32, device=device)
    count = torch.zeros(ctx.shape, dtype=torch.int64, device=device)
    chunk = max(1, (1 << 24) // max(1, ctx.shape[1] * n_src))
    for f0 in range(0, ctx.shape[0], chunk):  # a chunk of features at a time (bounded memory)
        at = slice(f0, f0 + chunk)
        dense = pattern[row[at], head[at], q[at]].float()  # [n, m, sources]
        valid = (dense >= THRESHOLD) & (source <= q[at, :, None])
        key = (dense.view(torch.int32).to(torch.int64) << SOURCE_BITS) | ((1 << SOURCE_BITS) - 1 - source)
        top = torch.where(valid, key, -1).topk(width, dim=-1).values  # weight descending, earlier source on ties
        real = top >= 0
        src[at, :, :width] = torch.where(real, (1 << SOURCE_BITS) - 1 - (top & ((1 << SOURCE_BITS) - 1)), 0).to(torch.int32)
        weights[at, :, :width] = torch.where(real, (top >> SOURCE_BITS).to(torch.int32).view(torch.float32), 0.0)
        count[at] = real.sum(-1)
    on_gpu = device.type == "cuda"
    host = [t.to("cpu", non_blocking=on_gpu) for t in (in_batch, ctx, pos, src, weights, count)]
    event = None
    if on_gpu:
        event = torch.cuda.Event()
        event.record()
    return event, host
