"""The forward passes of a replay: every context an example of the source index sits in, run
through one checkpoint, and per example row the values the replay keeps.

Contexts are padded with BOS to the source's context length and batched by the source's batch
size, as the index was made (so an unchanged model gives the index's values). Per example row:
the feature's new value at the example's token; its largest value over the context (BOS left
out) and where; for top examples, its values over the example's window. Contexts go in chunks
of ``CHUNK_CONTEXTS``, each saved as it finishes (``indexer.store.chunks``), so a killed replay
resumes at its last finished chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.forward.sites import Site
from indexer.store.chunks import saved_chunk, sequence_digest

CHUNK_CONTEXTS = 256


@dataclass(frozen=True)
class ExampleRows:
    """The source's examples as arrays, one entry per row: the plan index of its site, its
    neuron, context, position, and window (start, length; length 0: no window kept)."""

    site: np.ndarray
    neuron: np.ndarray
    ctx_id: np.ndarray
    pos: np.ndarray
    window_start: np.ndarray
    window_len: np.ndarray

    def __len__(self) -> int:
        return len(self.site)


@dataclass(frozen=True)
class Shape:
    """How the source index batched its contexts."""

    ctx_len: int
    batch_size: int
    bos: int
    dtype: str = "float32"


def run_checkpoint(model: Any, plan: list[Site], rows: ExampleRows, contexts: dict[int, np.ndarray], shape: Shape,
                   folder: Path, salt: str, bar: Any) -> dict[str, np.ndarray]:
    """Per row: ``new`` (the value at its token), ``ctx_max`` and ``ctx_argmax`` (the largest value
    over its context and its position), ``window`` [row, longest window] (NaN past a window's end
    or where none was kept)."""
    from indexer.forward.runner import SiteForward

    forward = SiteForward(model, plan, shape.dtype)
    order = sorted(contexts)
    width = int(rows.window_len.max()) if len(rows) else 0
    by_ctx: dict[int, list[int]] = {}
    for i, c in enumerate(rows.ctx_id.tolist()):
        by_ctx.setdefault(c, []).append(i)
    parts = []
    for n, start in enumerate(range(0, len(order), CHUNK_CONTEXTS)):
        chunk = order[start : start + CHUNK_CONTEXTS]

        def compute(chunk=chunk) -> dict[str, np.ndarray]:
            return _chunk(forward, plan, rows, chunk, contexts, by_ctx, shape, width, bar)

        arrays, ran = saved_chunk(folder, n, sequence_digest((contexts[c] for c in chunk), salt.encode()), compute)
        if not ran:
            bar.update(len(chunk))  # read back from a killed replay's save
        parts.append(arrays)
    out = {"new": np.full(len(rows), np.nan, np.float32), "ctx_max": np.full(len(rows), np.nan, np.float32),
           "ctx_argmax": np.zeros(len(rows), np.int64), "window": np.full((len(rows), width), np.nan, np.float32)}
    for arrays in parts:
        for key in out:
            out[key][arrays["rows"]] = arrays[key]
    return out


def _chunk(forward: Any, plan: list[Site], rows: ExampleRows, chunk: list[int], contexts: dict[int, np.ndarray],
           by_ctx: dict[int, list[int]], shape: Shape, width: int, bar: Any) -> dict[str, np.ndarray]:
    import torch

    from indexer.forward.runner import Batch

    mine = np.array([i for c in chunk for i in by_ctx.get(c, [])], np.int64)
    got = {"rows": mine, "new": np.full(len(mine), np.nan, np.float32), "ctx_max": np.full(len(mine), np.nan, np.float32),
           "ctx_argmax": np.zeros(len(mine), np.int64), "window": np.full((len(mine), width), np.nan, np.float32)}
    slot = {int(r): j for j, r in enumerate(mine)}
    device = forward.device
    for b in range(0, len(chunk), shape.batch_size):
        ids = chunk[b : b + shape.batch_size]
        tokens = np.full((len(ids), shape.ctx_len), shape.bos, np.int64)
        for r, c in enumerate(ids):
            tokens[r, : len(contexts[c])] = contexts[c]
        lengths = torch.tensor([len(contexts[c]) for c in ids])
        batch = Batch(tokens=torch.from_numpy(tokens).to(device), lengths=lengths.to(device),
                      ctx_ids=torch.tensor(ids).to(device), contexts=[])
        row_of = {c: r for r, c in enumerate(ids)}
        wanted = np.array([i for c in ids for i in by_ctx.get(c, [])], np.int64)

        def each(site: Site, features: Any, pattern: Any) -> None:
            k = plan.index(site)
            sel = wanted[rows.site[wanted] == k]
            if len(sel):
                _gather(features, sel, [row_of[c] for c in rows.ctx_id[sel].tolist()], rows, lengths, got,
                        [slot[int(i)] for i in sel])

        forward(batch, each=each)
        bar.update(len(ids))
    return got


def _gather(features: Any, sel: np.ndarray, batch_rows: list[int], rows: ExampleRows, lengths: Any,
            got: dict[str, np.ndarray], slots: list[int]) -> None:
    """Fill ``got`` at ``slots`` for example rows ``sel`` from one site's features [batch, pos, feat]."""
    import torch

    device = features.device
    b = torch.tensor(batch_rows, device=device)
    neuron = torch.from_numpy(rows.neuron[sel]).to(device)
    values = features[b, :, neuron].float()  # [rows, pos]: each row's feature over its context
    n_pos = values.shape[1]
    where = torch.arange(n_pos, device=device)[None, :]
    seen = (where >= 1) & (where < lengths.to(device)[b][:, None]) & ~torch.isnan(values)
    masked = torch.where(seen, values, torch.full_like(values, -torch.inf))
    best, at = masked.max(dim=1)
    pos = torch.from_numpy(rows.pos[sel]).to(device)
    slots_a = np.asarray(slots)
    got["new"][slots_a] = values.gather(1, pos[:, None])[:, 0].cpu().numpy()
    got["ctx_max"][slots_a] = torch.where(torch.isinf(best), torch.nan, best).cpu().numpy()
    got["ctx_argmax"][slots_a] = at.cpu().numpy()
    width = got["window"].shape[1]
    if width:
        start = torch.from_numpy(rows.window_start[sel]).to(device)
        span = start[:, None] + torch.arange(width, device=device)[None, :]
        inside = (torch.arange(width, device=device)[None, :] < torch.from_numpy(rows.window_len[sel]).to(device)[:, None])
        inside &= (span >= 0) & (span < n_pos)
        win = values.gather(1, span.clamp(0, n_pos - 1))
        got["window"][slots_a] = torch.where(inside, win, torch.nan).cpu().numpy()
