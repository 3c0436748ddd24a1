"""The single run's stream, laid out from the tokenize pieces: which context gets which ctx_id,
where its token ids lie, what each corpus's counts are; and the split into shards.

This repeats, over arrays, what ``indexer.inputs.contexts.ContextStream`` does as it streams
(and ``tests/integration/test_stream_pieces.py`` holds the two side by side):
- per corpus, the pieces' contexts in read order are cut by the corpus's share of the budget:
  a context is in the stream if fewer than ``budget`` text tokens come before it, the last
  one cut to fit;
- the counts are those up to the last document a context came from when more contexts follow
  (the budget ended the stream: ``CorpusCounters.cover``), else those of every record read;
- the corpora are interleaved round-robin, one context at a time: ctx_id is the position in
  that interleave.

A piece that failed (a bad record without ``--skip-bad-records``) ends its corpus's pieces
there: if the stream needs a context past it, the piece's error is the job's.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from indexer.errors import CorpusError
from indexer.inputs.corpus import CorpusCounters
from indexer.inputs.corpus_counters import READ_COUNTS
from indexer.scaleout.token_store import MARK, ShardSlice
from indexer.store.writer import atomic_write_bytes

MAX_BAD_EXAMPLES = 5  # as corpus_counters.bad_record keeps


def needs_more(results: Sequence[dict[str, Any]], budget: int | None) -> bool:
    """Whether a corpus's pieces so far (contiguous from its start) leave the stream's end
    unseen: no budget, or no context starting at ``budget`` text tokens or past it."""
    if budget is None:
        return True
    text = np.concatenate([r["lengths"] for r in results]).astype(np.int64) - 1 if results else np.zeros(0, np.int64)
    return not (len(text) and text.sum() - text[-1] >= budget)


@dataclass
class CorpusPart:
    """One corpus's contexts in the stream, in read order."""

    piece: np.ndarray  # [contexts] index into the job's piece list
    row: np.ndarray  # [contexts] row in the piece
    length: np.ndarray  # [contexts] tokens, BOS included, after the budget's cut
    counters: CorpusCounters


def corpus_part(results: Sequence[dict[str, Any]], piece_ids: Sequence[int], budget: int | None,
                fully_read: bool, name: str) -> CorpusPart:
    """Cut one corpus's pieces (in read order; ``piece_ids``: their places in the job's list)
    as its stream does."""
    results, piece_ids = _until_failure(results, piece_ids)
    n = [len(r["lengths"]) for r in results]
    piece = np.repeat(np.asarray(piece_ids, np.int64), n)
    row = np.concatenate([np.arange(k) for k in n]) if n else np.zeros(0, np.int64)
    length = np.concatenate([r["lengths"] for r in results]).astype(np.int64) if n else np.zeros(0, np.int64)
    doc = np.concatenate([r["doc_ids"] for r in results]) if n else np.zeros(0, np.int64)
    text = length - 1
    starts = np.cumsum(text) - text
    taken = len(text) if budget is None else int(np.searchsorted(starts, budget, side="left"))
    more = taken < len(text)  # a context follows the stream's last: the budget ended it
    failed = results[-1].get("corpus_error") if results else None
    if not more and (failed or not fully_read):
        if failed:
            raise CorpusError(failed)
        raise RuntimeError(f"corpus {name}: the tokenize pieces stop before the stream's end")  # a planning bug
    length = length[:taken].copy()
    if budget is not None and taken:
        length[-1] = 1 + min(text[taken - 1], budget - starts[taken - 1])
    counters = _counters(results, doc[:taken], mark=_cumulative_marks(results)[taken - 1] if more and taken else None)
    if more and not taken:  # a budget of zero tokens: nothing read counts
        counters = _counters(results, doc[:0], mark=np.zeros(MARK, np.int64))
    return CorpusPart(piece[:taken], row[:taken], length, counters)


def _until_failure(results: Sequence[dict[str, Any]], piece_ids: Sequence[int]) -> tuple[list, list]:
    for i, r in enumerate(results):
        if r.get("corpus_error"):
            return list(results[:i + 1]), list(piece_ids[:i + 1])
    return list(results), list(piece_ids)


def _cumulative_marks(results: Sequence[dict[str, Any]]) -> np.ndarray:
    """[contexts, MARK]: each context's mark as one reader of the whole corpus would have taken it."""
    out, base = [], np.zeros(MARK, np.int64)
    for r in results:
        marks = np.asarray(r["marks"], np.int64).reshape(-1, MARK)
        cum = marks + base
        cum[:, -1] = np.minimum(MAX_BAD_EXAMPLES, cum[:, -1])
        out.append(cum)
        base = base + _final_mark(r)
    return np.concatenate(out) if out else np.zeros((0, MARK), np.int64)


def _final_mark(result: dict[str, Any]) -> np.ndarray:
    c = result["counters"]
    return np.array([*(c[k] for k in READ_COUNTS), len(c["bad_examples"])], np.int64)


def _counters(results: Sequence[dict[str, Any]], used_docs: np.ndarray, mark: np.ndarray | None) -> CorpusCounters:
    """The corpus's counters: up to ``mark``, or (None) of every record the pieces read."""
    out = CorpusCounters()
    for r in results:
        c = CorpusCounters.from_dict(r["counters"])
        for key in READ_COUNTS:
            setattr(out, key, getattr(out, key) + getattr(c, key))
        out.bad_examples += c.bad_examples
        out.order = c.order
        out.kind = "tokens" if c.kind == "tokens" else out.kind
        out.documents_in_source = out.documents_in_source if c.documents_in_source is None else c.documents_in_source
    out.bad_examples = out.bad_examples[:MAX_BAD_EXAMPLES]
    if mark is not None:
        out.cover(tuple(int(x) for x in mark))
    out.documents_used = int(len(used_docs) and 1 + (np.diff(used_docs) != 0).sum())
    return out


@dataclass
class Layout:
    """The whole stream: per ctx_id its corpus, piece, row and length; each corpus's counters."""

    corpus: np.ndarray
    piece: np.ndarray
    row: np.ndarray
    length: np.ndarray
    counters: dict[str, CorpusCounters]
    pieces: list[str]  # piece file names

    @property
    def n_contexts(self) -> int:
        return len(self.row)

    def text_tokens(self) -> np.ndarray:
        return self.length - 1

    def shard_bounds(self, n_shards: int) -> np.ndarray:
        """``n + 1`` ctx_id bounds of ``n = min(n_shards, contexts)`` contiguous shards holding
        about the same number of text tokens each (so each shard holds every corpus in
        proportion, whatever the number of corpora and shards)."""
        n = max(1, min(n_shards, self.n_contexts))
        ends = np.cumsum(self.text_tokens())
        total = int(ends[-1]) if len(ends) else 0
        bounds = [0]
        for j in range(1, n):
            target = total * j / n
            at = int(np.searchsorted(ends, target, side="left"))  # a bound at `at` leaves ends[at - 1] before it
            before = int(ends[at - 1]) if at else 0
            after = int(ends[at]) if at < len(ends) else total
            at += after - target < target - before  # the nearer of the two bounds around the target
            bounds.append(min(max(at, bounds[-1] + 1), self.n_contexts - (n - j)))
        bounds.append(self.n_contexts)
        return np.asarray(bounds, np.int64)

    def shard(self, lo: int, hi: int) -> ShardSlice:
        return ShardSlice(lo, self.corpus[lo:hi], self.piece[lo:hi], self.row[lo:hi], self.length[lo:hi], self.pieces)


def lay_out(parts: Sequence[CorpusPart], names: Sequence[str], pieces: list[str]) -> Layout:
    """The corpora's parts interleaved round-robin, one context at a time."""
    n = len(parts)
    corpus = np.concatenate([np.full(len(p.row), c, np.int64) for c, p in enumerate(parts)]) if parts else np.zeros(0)
    k = np.concatenate([np.arange(len(p.row)) for p in parts]) if parts else np.zeros(0)
    order = np.argsort(k * n + corpus, kind="stable")

    def joined(key: str) -> np.ndarray:
        return np.concatenate([getattr(p, key) for p in parts])[order]

    return Layout(corpus[order].astype(np.int16), joined("piece").astype(np.int32), joined("row").astype(np.int32),
                  joined("length").astype(np.int32), {name: p.counters for name, p in zip(names, parts)}, pieces)


def save_layout(path: Path, layout: Layout, figures: dict[str, Any]) -> None:
    """Keep a job's layout and the figures of its tokenize phase (atomically): a resumed job
    reads them back."""
    meta = {"counters": {k: v.to_dict() for k, v in layout.counters.items()}, "pieces": layout.pieces, "figures": figures}
    buffer = io.BytesIO()
    np.savez(buffer, corpus=layout.corpus, piece=layout.piece, row=layout.row, length=layout.length,
             meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    atomic_write_bytes(path, buffer.getvalue())


def load_layout(path: Path) -> tuple[Layout, dict[str, Any]]:
    with np.load(path) as npz:
        meta = json.loads(npz["meta"].tobytes().decode())
        counters = {k: CorpusCounters.from_dict(v) for k, v in meta["counters"].items()}
        layout = Layout(npz["corpus"], npz["piece"], npz["row"], npz["length"], counters, meta["pieces"])
    return layout, meta["figures"]
