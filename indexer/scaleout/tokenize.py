"""The worker side of the tokenize phase: one piece of one corpus, tokenized and cut into
contexts exactly as the single run's stream cuts them, written to the token store.

The result the client plans and lays out the stream with: per context its length, document
and the corpus counts as its document was read (``marks``), the piece's counters, and the
figures of the manifest's ``dask.pieces``. A bad record without ``--skip-bad-records`` is not
an error here: the piece stops and says so (``corpus_error``), and the layout decides whether
the stream reaches it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from indexer.config import IndexConfig
from indexer.errors import CorpusError, NeuroscopeError
from indexer.inputs.contexts import ContextStream
from indexer.inputs.corpus import CorpusCounters
from indexer.scaleout.pieces import Piece
from indexer.scaleout.token_store import MARK, piece_path, write_piece
from indexer.scaleout.worker import identity, opened_run, record_attempt, returned


def tokenize_piece(cfg_dict: dict[str, Any], shards_root: str, piece: Piece,
                   workers_per_host: dict[str, int]) -> dict[str, Any]:
    """Tokenize one piece with the job's stream settings (a Dask task): the worker's own run's
    tokenizer (its model is loaded once per worker process, by its first task). A domain error
    (bad model or options), which no retry can fix, comes back as ``{"error": message}``."""
    try:
        return _tokenize_piece(IndexConfig.from_dict(cfg_dict), shards_root, piece, workers_per_host)
    except NeuroscopeError as e:
        return returned(e)


def _tokenize_piece(cfg: IndexConfig, shards_root: str, piece: Piece, workers_per_host: dict[str, int]) -> dict[str, Any]:
    path = piece_path(shards_root, piece.corpus, piece.start)
    worker = identity()
    attempts = record_attempt(path.with_suffix(".attempts.json"), worker)
    run, open_seconds = opened_run(cfg, workers_per_host, worker["host"])
    tokenizing = time.perf_counter()
    result = tokenize_into(run.contexts, piece, path, run.model.info.d_vocab)
    result["info"] = {
        "piece": path.stem, "corpus": run.contexts.specs[piece.corpus].name, "start": piece.start, "stop": piece.stop,
        **worker, "attempts": len(attempts), "documents": result["counters"]["documents"],
        "contexts": len(result["lengths"]), "tokens_tokenized": result["text_tokens"],
        "open_seconds": round(open_seconds, 3), "tokenize_seconds": round(time.perf_counter() - tokenizing, 3),
        "finished": time.time(),
    }
    return result


def tokenize_into(stream: ContextStream, piece: Piece, path: Path, d_vocab: int) -> dict[str, Any]:
    """Tokenize ``piece`` with the run's stream settings into the piece file ``path``; the
    result the client plans and lays out with (no figures)."""
    spec = stream.specs[piece.corpus]
    stream = replace(stream, shard=(0, 1), counters={spec.name: CorpusCounters()})
    tokens, doc_ids, marks, error, exhausted = [], [], [], None, True
    text_tokens = 0
    try:
        for doc_id, head, chunk, mark in stream.corpus_chunks(spec, piece.span):
            ids = np.empty(len(chunk) + 1, np.int64)
            ids[0] = head
            ids[1:] = chunk
            tokens.append(ids)
            doc_ids.append(doc_id)
            marks.append(mark)
            text_tokens += len(chunk)
            if piece.stop_tokens is not None and text_tokens - len(chunk) >= piece.stop_tokens:
                exhausted = False  # this context starts past the budget: the stream's end is seen
                break
    except CorpusError as e:
        error = str(e)
    write_piece(path, tokens, doc_ids, marks, d_vocab)
    counters = stream.counters[spec.name]
    return {
        "corpus": piece.corpus, "start": piece.start, "stop": piece.stop, "file": path.name,
        "records": piece.records if piece.records is not None else counters.documents + counters.empty_documents,
        "lengths": np.array([len(t) for t in tokens], np.int32), "doc_ids": np.array(doc_ids, np.int64),
        "marks": np.array(marks, np.int64).reshape(len(tokens), MARK), "counters": counters.to_dict(),
        "text_tokens": text_tokens, "exhausted": exhausted and error is None, "corpus_error": error,
    }
