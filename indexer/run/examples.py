"""The examples of one site: which (feature, context, position) they are, and their windows.

An ``ExampleSet`` is flat: one entry per example, top-k first, then quantile samples. The
top-k examples' window values come from the recorder (captured while streaming); finalize
gives every example its window's tokens from the context store (``fill_tokens``) and runs the
model again only over the contexts of examples whose values were not captured
(``fill_values``: today the quantile samples).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from indexer.run.decode import WindowDecoder

KINDS = np.array(["top", "quantile"])


class ExampleSet:
    """Flat arrays, one entry per example of one site."""

    def __init__(self, site: Any, feature, kind, bin_, rank, value, ctx_id, pos):
        self.site = site
        self.feature = np.asarray(feature, np.int64)  # [example]
        self.kind = np.asarray(kind, np.int8)  # 0 top, 1 quantile
        self.bin = np.asarray(bin_, np.int32)
        self.rank = np.asarray(rank, np.int32)
        self.value = np.asarray(value, np.float32)
        self.ctx_id = np.asarray(ctx_id, np.int64)
        self.pos = np.asarray(pos, np.int64)
        n = len(self.feature)
        self.corpus = np.empty(n, dtype=object)
        self.doc_id = np.full(n, -1, np.int64)
        self.window_start = np.zeros(n, np.int64)
        self.window_len = np.zeros(n, np.int64)
        self.window_tokens: np.ndarray | None = None  # [example, width] int32
        self.window_values: np.ndarray | None = None  # [example, width] float32
        self.captured = np.zeros(n, bool)  # window_values already hold the example's window
        self._by_ctx: dict[int, np.ndarray] = {}

    def release(self) -> None:
        """Drop the window arrays (once written): the bulk of finalize's memory."""
        self.window_tokens = self.window_values = None
        self._by_ctx = {}

    def __len__(self) -> int:
        return len(self.feature)

    def ctx_ids(self) -> set[int]:
        return set(self.ctx_id.tolist())

    def uncaptured_ctx_ids(self) -> set[int]:
        """The contexts finalize must run the model over: those of examples without values."""
        return set(self.ctx_id[~self.captured].tolist())

    def _prepare(self, width: int) -> None:
        if self.window_tokens is None:
            self.window_tokens = np.zeros((len(self), width), np.int32)
        if self.window_values is None:
            self.window_values = np.zeros((len(self), width), np.float32)
        if not self._by_ctx:
            order = np.argsort(self.ctx_id, kind="stable")
            ids, starts = np.unique(self.ctx_id[order], return_index=True)
            self._by_ctx = dict(zip(ids.tolist(), np.split(order, starts[1:])))

    def _cols(self, idx: np.ndarray, length: int, before: int, after: int) -> np.ndarray:
        """[example, width]: the context positions of each window (clipped into the context)."""
        start = np.maximum(self.pos[idx] - before, 0)
        return np.clip(start[:, None] + np.arange(before + after + 1), 0, length - 1)

    def fill_tokens(self, contexts: list, before: int, after: int) -> None:
        """Window tokens, start, length, corpus and doc of the examples in ``contexts``."""
        self._prepare(before + after + 1)
        for ctx in contexts:
            idx = self._by_ctx.get(ctx.ctx_id)
            if idx is None:
                continue
            length = len(ctx.token_ids)
            start = np.maximum(self.pos[idx] - before, 0)
            stop = np.minimum(self.pos[idx] + after + 1, length)
            self.window_tokens[idx] = ctx.token_ids[self._cols(idx, length, before, after)]
            self.window_start[idx] = start
            self.window_len[idx] = stop - start
            self.corpus[idx] = ctx.corpus
            self.doc_id[idx] = ctx.doc_id

    def fill_values(self, batch: Any, acts: Any, before: int, after: int) -> None:
        """Window values of the not yet captured examples in ``batch``; acts: [batch, pos, feat]
        for this site."""
        self._prepare(before + after + 1)
        acts = acts.float().cpu().numpy()  # [batch, pos, feat]
        for row, ctx in enumerate(batch.contexts):
            idx = self._by_ctx.get(ctx.ctx_id)
            if idx is None:
                continue
            idx = idx[~self.captured[idx]]
            cols = self._cols(idx, len(ctx.token_ids), before, after)
            self.window_values[idx] = acts[row, cols, self.feature[idx, None]]
            self.captured[idx] = True


def collect_examples(site: Any, rec: Any, bands: dict[str, np.ndarray] | None = None,
                     window: tuple[int, int] | None = None) -> ExampleSet:
    """The top-k and quantile-sample examples held by a site's recorders (empty slots dropped);
    ``bands``: ``rec.samples.bands()`` if already computed. With ``window`` = (before, after)
    equal to the one the top-k recorder captured, the top-k examples come with their window
    values (``captured``)."""
    values, ctx_ids, pos = (np.asarray(a) for a in rec.topk.result())  # [feat, k]
    n, k = values.shape
    top = dict(
        feature=np.repeat(np.arange(n), k), kind=np.zeros(n * k), bin_=np.full(n * k, -1),
        rank=np.tile(np.arange(k), n), value=values.ravel(), ctx_id=ctx_ids.ravel(), pos=pos.ravel(),
    )
    samples = bands if bands is not None else rec.samples.samples()
    s_values, s_ctx, s_pos = (np.asarray(samples[k]) for k in ("value", "ctx_id", "pos"))  # [feat, bin, per_bin]
    # Within a bin, rank 0 is the highest value (the sample itself is uniform).
    order = np.argsort(np.where(s_ctx >= 0, -s_values, np.inf), axis=-1, kind="stable")
    s_values, s_ctx, s_pos = (np.take_along_axis(a, order, -1) for a in (s_values, s_ctx, s_pos))
    _, n_bins, per_bin = s_values.shape
    grid = np.indices(s_values.shape).reshape(3, -1)
    quantile = dict(
        feature=grid[0], kind=np.ones(grid.shape[1]), bin_=grid[1], rank=grid[2],
        value=s_values.ravel(), ctx_id=s_ctx.ravel(), pos=s_pos.ravel(),
    )
    merged = {key: np.concatenate([top[key], quantile[key]]) for key in top}
    keep = merged["ctx_id"] >= 0
    examples = ExampleSet(site, **{key: value[keep] for key, value in merged.items()})
    if window is not None and window == (rec.topk.before, rec.topk.after):
        width = window[0] + window[1] + 1
        wins = np.concatenate([rec.topk.windows().reshape(n * k, width),
                               np.zeros((grid.shape[1], width), np.float32)])
        examples.window_values = np.ascontiguousarray(wins[keep])
        examples.captured = np.concatenate([np.ones(n * k, bool), np.zeros(grid.shape[1], bool)])[keep]
    pool = getattr(rec, "windows", None)  # quantile samples whose window the stream captured
    if window is not None and pool is not None and pool.pool and window == (pool.before, pool.after):
        rows = np.flatnonzero(examples.kind == 1)
        found, values = pool.lookup(examples.feature[rows], examples.ctx_id[rows], examples.pos[rows])
        if examples.window_values is None:
            examples.window_values = np.zeros((len(examples), window[0] + window[1] + 1), np.float32)
        examples.window_values[rows[found]] = values[found]
        examples.captured[rows[found]] = True
    if window is not None and window == (rec.topk.before, rec.topk.after):
        _windows_from_top(examples, ctx_ids, pos)
    return examples


def _windows_from_top(examples: ExampleSet, top_ctx: np.ndarray, top_pos: np.ndarray) -> None:
    """A quantile sample still without a window that is also one of its feature's top-k
    examples (often, in the top bin) takes that example's captured window: the same token's."""
    rows = np.flatnonzero((examples.kind == 1) & ~examples.captured)
    if not len(rows):
        return
    f = examples.feature[rows]
    same = (top_ctx[f] == examples.ctx_id[rows, None]) & (top_pos[f] == examples.pos[rows, None])  # [m, k]
    hit = same.any(axis=1)
    if not hit.any():
        return
    # top-k rows come first in the set, feature-major, empty slots dropped: find each by its key
    top_rows = np.flatnonzero(examples.kind == 0)
    key = examples.feature[top_rows] * top_ctx.shape[1] + examples.rank[top_rows]
    at = top_rows[np.searchsorted(key, f[hit] * top_ctx.shape[1] + same[hit].argmax(axis=1))]
    examples.window_values[rows[hit]] = examples.window_values[at]
    examples.captured[rows[hit]] = True


def window_columns(examples: ExampleSet, vocab: np.ndarray, decoder: WindowDecoder) -> dict[str, Any]:
    """Columns of the examples table (without the site/feature key columns, plus 'feature')."""
    n = len(examples)
    width = examples.window_tokens.shape[1] if examples.window_tokens is not None else 0
    mask = np.arange(width)[None, :] < examples.window_len[:, None]  # [example, width]
    offsets = np.concatenate([[0], np.cumsum(examples.window_len)]).astype(np.int32)
    tokens = examples.window_tokens if examples.window_tokens is not None else np.zeros((n, 0), np.int32)
    values = examples.window_values if examples.window_values is not None else np.zeros((n, 0), np.float32)
    at = examples.pos - examples.window_start
    token_id = tokens[np.arange(n), at] if n else np.zeros(0, np.int32)
    prev_id = tokens[np.arange(n), np.maximum(at - 1, 0)] if n else np.zeros(0, np.int32)
    texts = decoder.decode(tokens, examples.window_len)
    return {
        "feature": examples.feature,
        "kind": KINDS[examples.kind],
        "bin": examples.bin,
        "rank": examples.rank,
        "activation": examples.value,
        "corpus": examples.corpus.astype(str),
        "ctx_id": examples.ctx_id,
        "doc_id": examples.doc_id,
        "pos": examples.pos.astype(np.int32),
        "token_id": token_id.astype(np.int32),
        "token_str": vocab[token_id],
        "prev_token_str": np.where(examples.pos > 0, vocab[prev_id], ""),
        "context_text": np.array(texts, dtype=object),
        "window_start": examples.window_start.astype(np.int32),
        "window_token_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens[mask], pa.int32())),
        "window_acts": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[mask], pa.float32())),
    }
