"""Corpus specs -> documents: the front door of the corpus readers.

A corpus spec is ``[NAME=]SPEC`` where SPEC is
- an embedded corpus name (``data/corpora/NAME.parquet``),
- a local file: ``.jsonl`` / ``.json`` (objects with a ``text`` field), ``.parquet`` (a ``text``
  column) or ``.txt`` (the whole file is one document),
- ``hf:OWNER/NAME[:split]``, streamed with Hugging Face ``datasets`` (read from the local
  Hugging Face cache when ``HF_HUB_OFFLINE=1``), or ``hf:/path/to/dataset_dir[:split]``, a
  local dataset folder (``Dataset.save_to_disk`` output, or a folder of parquet/jsonl files).

A record is text (a ``text`` field or column) or pre-tokenized (a ``tokens`` column holding a
list of token ids; it wins over ``text`` when both exist). ``read_documents`` reads them in
file order or in a seeded shuffle (see there).

``doc_id`` is the 0-based index of the record in its source, so it is stable whatever is
skipped and whatever the order. Empty documents are skipped and counted; invalid UTF-8 (and
lone UTF-16 surrogates from JSON escapes) is replaced and counted; a UTF-8 byte-order mark is
dropped; a malformed record is an error naming the file and line, or, with
``skip_bad_records``, counted. A text longer than ``MAX_DOC_CHARS`` is handed on in pieces of
that size (consecutive, same ``doc_id``; the contexts run on across them), so one huge line
never reaches the tokenizer whole.

Where things live: specs in ``corpus_spec``, counters in ``corpus_counters``, file readers in
``corpus_files``, the shuffled order and Parquet rows in ``corpus_order``, ``hf:`` datasets in
``corpus_hf``. Their public names are importable from here.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np

from indexer.inputs.corpus_counters import BadRecord, CorpusCounters, Repaired, bad_record, valid_unicode
from indexer.inputs.corpus_files import Span, file_records, jsonl_record_count, jsonl_records_at
from indexer.inputs.corpus_hf import HF_SHUFFLE_BUFFER, hf_record_count, hf_records
from indexer.inputs.corpus_order import buffer_shuffled, parquet_rows, permutation, shuffled_list
from indexer.inputs.corpus_spec import FILE_SUFFIXES, CorpusSpec, embedded_corpora, parse_corpus_spec

__all__ = [
    "FILE_SUFFIXES", "HF_SHUFFLE_BUFFER", "MAX_DOC_CHARS", "CorpusCounters", "CorpusSpec", "Span", "buffer_shuffled",
    "embedded_corpora", "iter_documents", "parse_corpus_spec", "read_documents", "record_count",
]

MAX_DOC_CHARS = 1 << 20  # longer texts are cut into pieces of this many characters


def iter_documents(
    spec: CorpusSpec, counters: CorpusCounters, skip_bad_records: bool = False
) -> Iterator[tuple[int, str]]:
    """Yield ``(doc_id, text)`` for every non-empty text document of a corpus, in file order
    (pieces of at most ``MAX_DOC_CHARS``)."""
    if spec.kind == "hf":
        records = hf_records(spec, counters, skip_bad_records, "file", 0)
    else:
        records = file_records(spec.location, counters)
    yield from _documents(records, counters, skip_bad_records)


def read_documents(
    spec: CorpusSpec, counters: CorpusCounters, skip_bad_records: bool = False, order: str = "file", seed: int = 0,
    span: Span = None,
) -> Iterator[tuple[int, str | np.ndarray]]:
    """Yield ``(doc_id, text or token ids)`` for every non-empty document of a corpus (texts in
    pieces of at most ``MAX_DOC_CHARS``).

    ``order='file'`` reads records as the source holds them. ``order='shuffle'`` reads them in
    a permutation seeded by ``seed`` (the same for any label of the corpus), so any prefix of
    the stream is a uniform sample of the whole corpus; a streamed ``hf:`` dataset, whose length
    is unknown, passes through a seeded shuffle buffer of ``HF_SHUFFLE_BUFFER`` documents
    instead. ``doc_id`` is always the record's index in file order.

    ``span = (start, stop)`` reads only the records at those positions of the order (empty and
    bad records count as positions): the pieces a corpus is tokenized in, in parallel
    (``record_count`` says how many positions there are, where that is cheap to know).
    """
    counters.order = order
    records = _ordered_records(spec, counters, skip_bad_records, order, seed, span)
    yield from _documents(records, counters, skip_bad_records)


def record_count(spec: CorpusSpec) -> int | None:
    """The records (read positions) of a corpus whose records can be read from any position
    without reading those before: Parquet rows, JSON Lines records, rows of an hf: dataset
    on disk. None for the others (.json, .txt, a hub stream), read from their start only."""
    if spec.kind == "hf":
        return hf_record_count(spec)
    suffix = Path(spec.location).suffix
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(spec.location).metadata.num_rows
        except Exception:  # unreadable: the readers say so, in one line
            return None
    return jsonl_record_count(spec.location) if suffix == ".jsonl" else None


def _ordered_records(spec: CorpusSpec, counters: CorpusCounters, skip: bool, order: str, seed: int,
                     span: Span) -> Iterator:
    if spec.kind == "hf":
        return hf_records(spec, counters, skip, order, seed, span)
    if Path(spec.location).suffix == ".parquet":
        return parquet_rows(spec.location, counters, skip, order, seed, span)
    if span is not None and spec.location.endswith(".jsonl"):  # parse only the span's lines
        if order == "file":
            return jsonl_records_at(spec.location, range(span[0], span[1]))
        n = counters.documents_in_source = jsonl_record_count(spec.location)
        return jsonl_records_at(spec.location, permutation(n, seed)[span[0]:span[1]])
    records = file_records(spec.location, counters)  # JSON / JSON Lines / text: held in memory anyway
    if order == "file":
        return records if span is None else islice(records, span[0], span[1])
    return shuffled_list(list(records), counters, seed, span)


def _documents(records: Iterator, counters: CorpusCounters, skip: bool) -> Iterator[tuple[int, str | np.ndarray]]:
    """Count and pass on the non-empty records (a bad one: counted, or CorpusError)."""
    for doc_id, content in records:
        if isinstance(content, BadRecord):
            bad_record(counters, skip, content.message)
            continue
        if isinstance(content, np.ndarray):
            counters.kind = "tokens"
            if len(content) == 0:
                counters.empty_documents += 1
                continue
            counters.documents += 1
            yield doc_id, content
            continue
        text, repaired = (content.text, True) if isinstance(content, Repaired) else (content, False)
        if not text or text.isspace():  # as `not text.strip()`, without a copy
            counters.empty_documents += 1
            continue
        counters.documents += 1
        yield from _pieces(doc_id, text, repaired, counters)


def _pieces(doc_id: int, text: str, repaired: bool, counters: CorpusCounters) -> Iterator[tuple[int, str]]:
    """``text`` in pieces of ``MAX_DOC_CHARS``, lone surrogates replaced; a repaired record is
    counted once, before the first piece that shows it is handed on."""
    if repaired:
        counters.utf8_replaced += 1
    for start in range(0, len(text), MAX_DOC_CHARS):
        found = CorpusCounters()
        piece = valid_unicode(text[start:start + MAX_DOC_CHARS], found)
        if found.utf8_replaced and not repaired:
            counters.utf8_replaced += 1
            repaired = True
        yield doc_id, piece
