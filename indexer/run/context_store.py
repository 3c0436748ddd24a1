"""The context store: every context's token ids, written while the stream runs, so finalize
never reads or tokenizes the corpus again.

Two append-only files in the output folder:

- ``contexts.bin``: the token ids of every context, one after another (uint16 when the
  model's vocabulary fits, else uint32; BOS included);
- ``contexts.idx``: int64 rows ``(ctx_id, corpus, doc_id, offset, length)`` per context,
  ``corpus`` the corpus's index in the run's ``--corpus`` list, ``offset``/``length`` in
  tokens into ``contexts.bin``.

A batch's tokens are appended before its index rows. ``commit`` flushes and fsyncs both files
and returns their lengths; the checkpoint records them (``progress.store``), and ``--resume``
truncates both files back to those lengths, so whatever a killed run appended after its last
checkpoint is dropped and written again, exactly as the recorders redo those batches. A
store shorter than its checkpoint says is refused.

A single run's store is deleted once its manifest is written (the ``contexts`` table is what
users query); a shard's index keeps it, since ``neuroscope merge`` reads the shards' stores
(``StoredContexts`` over several folders, in ctx_id order).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from indexer.errors import IndexDirError
from indexer.inputs.contexts import Context
from indexer.store.killpoint import kill_point

TOKENS_FILE = "contexts.bin"
INDEX_FILE = "contexts.idx"
STORE_FILES = (TOKENS_FILE, INDEX_FILE)
ROW = 5  # int64 fields per context in the index file
CTX, CORPUS, DOC, OFFSET, LENGTH = range(ROW)


def token_dtype(d_vocab: int) -> np.dtype:
    """uint16 when every token id fits, else uint32."""
    return np.dtype("<u2") if d_vocab <= 2**16 else np.dtype("<u4")


class ContextStore:
    """The appending side, for one streaming run (or one shard)."""

    def __init__(self, out: Path, corpora: list[str], d_vocab: int, committed: dict[str, int] | None = None):
        """Open (or create) the store in ``out``, cut back to ``committed`` (``commit``'s
        dict; None or zeros: empty)."""
        self.corpora = {name: i for i, name in enumerate(corpora)}
        self.dtype = token_dtype(d_vocab)
        committed = committed or {"contexts": 0, "tokens": 0}
        self.n_contexts, self.n_tokens = int(committed["contexts"]), int(committed["tokens"])
        self._files = []
        for name, size in ((TOKENS_FILE, self.n_tokens * self.dtype.itemsize), (INDEX_FILE, self.n_contexts * ROW * 8)):
            path = out / name
            have = path.stat().st_size if path.exists() else 0
            if have < size:
                raise IndexDirError(f"{path} holds {have} bytes but the checkpoint counts {size}: the context store "
                                    "was truncated or deleted; start again with --overwrite")
            f = open(path, "r+b" if path.exists() else "w+b")
            f.truncate(size)
            f.seek(size)
            self._files.append(f)

    def append(self, group: list[Context]) -> None:
        """Append a batch's contexts (in stream order)."""
        lengths = np.array([len(c.token_ids) for c in group], np.int64)
        rows = np.empty((len(group), ROW), np.int64)
        rows[:, CTX] = [c.ctx_id for c in group]
        rows[:, CORPUS] = [self.corpora[c.corpus] for c in group]
        rows[:, DOC] = [c.doc_id for c in group]
        rows[:, OFFSET] = self.n_tokens + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        rows[:, LENGTH] = lengths
        tokens = np.concatenate([c.token_ids for c in group]).astype(self.dtype) if group else np.zeros(0, self.dtype)
        tokens_file, index_file = self._files
        tokens_file.write(tokens.tobytes())
        tokens_file.flush()
        kill_point("store-write")  # tokens written, their index rows not yet
        index_file.write(rows.astype("<i8").tobytes())
        self.n_tokens += len(tokens)
        self.n_contexts += len(group)

    def commit(self) -> dict[str, int]:
        """Make everything appended so far durable; the lengths a checkpoint records."""
        for f in self._files:
            f.flush()
            os.fsync(f.fileno())
        return {"contexts": self.n_contexts, "tokens": self.n_tokens}

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


def has_store(folder: Path) -> bool:
    return all((Path(folder) / name).is_file() for name in STORE_FILES)


def remove_store(folder: Path) -> None:
    for name in STORE_FILES:
        (Path(folder) / name).unlink(missing_ok=True)


class StoredContexts:
    """The reading side: the contexts of one or more stores (a run, or the shards of one), by
    ctx_id. Token ids are read through a memory map, a context at a time."""

    def __init__(self, folders: list[Path], corpora: list[str], d_vocab: int):
        dtype = token_dtype(d_vocab)
        self.corpora = list(corpora)
        self._tokens, parts = [], []
        for i, folder in enumerate(folders):
            folder = Path(folder)
            try:
                raw = np.fromfile(folder / INDEX_FILE, dtype="<i8")
                n_tokens = (folder / TOKENS_FILE).stat().st_size // dtype.itemsize
                tokens = np.memmap(folder / TOKENS_FILE, dtype=dtype, mode="r") if n_tokens else np.zeros(0, dtype)
            except OSError as e:
                raise IndexDirError(f"cannot read the context store in {folder}: {e.strerror or e}") from None
            if len(raw) % ROW:
                raise IndexDirError(f"{folder / INDEX_FILE} is cut mid-row: the context store is damaged")
            rows = raw.reshape(-1, ROW)
            if len(rows) and ((rows[:, OFFSET] + rows[:, LENGTH]).max() > n_tokens
                              or rows[:, CORPUS].max() >= len(corpora)):
                raise IndexDirError(f"the context store in {folder} points past its tokens or corpora: it is damaged")
            self._tokens.append(tokens)
            parts.append(np.concatenate([rows, np.full((len(rows), 1), i, np.int64)], axis=1))
        rows = np.concatenate(parts) if parts else np.zeros((0, ROW + 1), np.int64)
        self.rows = rows[np.argsort(rows[:, CTX], kind="stable")]  # [context, ROW + 1]: + the folder
        if len(self.rows) > 1 and (np.diff(self.rows[:, CTX]) == 0).any():
            raise IndexDirError("the context stores hold a context twice (shards of different runs?)")

    def __len__(self) -> int:
        return len(self.rows)

    def contexts(self, wanted: set[int] | None = None) -> Iterator[Context]:
        """The stored contexts in ctx_id order (only ``wanted`` ids if given)."""
        rows = self.rows
        if wanted is not None:
            rows = rows[np.isin(rows[:, CTX], np.fromiter(wanted, np.int64, len(wanted)))]
        for ctx_id, corpus, doc_id, offset, length, folder in rows.tolist():
            tokens = np.asarray(self._tokens[folder][offset:offset + length], dtype=np.int32)
            yield Context(ctx_id, self.corpora[corpus], doc_id, tokens)
