"""The job's token store: the stream's token ids, written once by the tokenize pieces, read by
every shard for its own contexts only.

One file per piece, ``OUT/.shards/tokens/piece-C-START.npz`` (corpus C's records from read
position START on): the token ids of every context the piece's documents give before any
budget cuts them (BOS or the row's own first token included), and per context its length,
document and the corpus counts as its document was read (``CorpusCounters.mark``). Written
atomically; a piece run twice writes the same bytes.

A shard reads its contexts through ``PieceStream``: the rows the layout (``layout.py``) gives
it, in ctx_id order, each cut to its length in the stream (the budget's last context is).
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from indexer.errors import IndexDirError
from indexer.inputs.contexts import Context
from indexer.inputs.corpus import CorpusCounters, CorpusSpec
from indexer.inputs.corpus_counters import READ_COUNTS
from indexer.run.context_store import token_dtype
from indexer.store.writer import atomic_write_bytes

TOKENS_DIR = "tokens"  # under the job's .shards folder
MARK = len(READ_COUNTS) + 1  # a mark: the read counts, then how many bad examples are kept
OPEN_PIECES = 4  # piece files a shard keeps loaded (it reads each corpus's pieces in order)


def piece_path(root: str | Path, corpus: int, start: int) -> Path:
    return Path(root) / TOKENS_DIR / f"piece-{corpus}-{start}.npz"


def write_piece(path: Path, tokens: list[np.ndarray], doc_ids: list[int], marks: list[tuple], d_vocab: int) -> None:
    """One piece's contexts: ``tokens[i]`` the token ids of context i, BOS first."""
    lengths = np.array([len(t) for t in tokens], np.int32)
    flat = np.concatenate(tokens).astype(token_dtype(d_vocab)) if tokens else np.zeros(0, token_dtype(d_vocab))
    buffer = io.BytesIO()
    np.savez(buffer, tokens=flat, lengths=lengths, doc_ids=np.array(doc_ids, np.int64),
             marks=np.array(marks, np.int64).reshape(len(tokens), MARK))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


@dataclass
class _Piece:
    tokens: np.ndarray  # [tokens] every context's ids, one after another
    offsets: np.ndarray  # [contexts + 1]
    doc_ids: np.ndarray  # [contexts]


def read_piece(path: Path) -> _Piece:
    try:
        with np.load(path) as npz:
            lengths = npz["lengths"].astype(np.int64)
            return _Piece(npz["tokens"], np.concatenate([[0], np.cumsum(lengths)]), npz["doc_ids"])
    except (OSError, ValueError, KeyError) as e:
        raise IndexDirError(f"cannot read the token store's {path} ({type(e).__name__}: {e}); "
                            "rerun the job with --overwrite") from None


@dataclass
class ShardSlice:
    """What one shard indexes: contexts ``first .. first + len(row) - 1`` of the stream, each a
    row of a piece file, cut to ``length`` tokens (BOS included)."""

    first: int
    corpus: np.ndarray  # [contexts] index into the job's corpora
    piece: np.ndarray  # [contexts] index into ``pieces``
    row: np.ndarray  # [contexts] the context's row in its piece
    length: np.ndarray  # [contexts] tokens in the stream
    pieces: Sequence[str] = ()  # piece file names, under the tokens folder

    @property
    def n_contexts(self) -> int:
        return len(self.row)

    @property
    def n_tokens(self) -> int:
        """Text tokens (BOS excluded)."""
        return int(self.length.sum()) - len(self.length)


@dataclass
class PieceStream:
    """A shard's contexts, read from the token store: what ``Run`` streams in place of a
    ``ContextStream`` (``specs``, ``counters`` and ``contexts()`` alike)."""

    specs: Sequence[CorpusSpec]
    root: Path  # the job's .shards folder
    part: ShardSlice
    counters: dict[str, CorpusCounters] = field(default_factory=dict)
    _open: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def __iter__(self) -> Iterator[Context]:
        return self.contexts()

    def contexts(self, wanted: set[int] | None = None) -> Iterator[Context]:
        """The shard's contexts in ctx_id order (only ``wanted`` ids if given)."""
        part = self.part
        for i in range(part.n_contexts):
            ctx_id = part.first + i
            if wanted is not None and ctx_id not in wanted:
                continue
            piece = self._piece(int(part.piece[i]))
            row = int(part.row[i])
            start = int(piece.offsets[row])
            tokens = np.asarray(piece.tokens[start:start + int(part.length[i])], dtype=np.int32)
            yield Context(ctx_id, self.specs[int(part.corpus[i])].name, int(piece.doc_ids[row]), tokens)

    def _piece(self, index: int) -> Any:
        if index in self._open:
            self._open.move_to_end(index)
            return self._open[index]
        piece = read_piece(self.root / TOKENS_DIR / self.part.pieces[index])
        self._open[index] = piece
        if len(self._open) > OPEN_PIECES:
            self._open.popitem(last=False)
        return piece
