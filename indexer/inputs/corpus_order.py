"""The order documents are read in: file order or a seeded shuffle over the whole corpus.

A shuffle is a permutation seeded by the run's seed (``permutation``): Parquet rows are fetched
a window at a time in that order, records of JSON / JSON Lines / text files (held in memory
anyway) are permuted as a list, and a streamed ``hf:`` dataset, whose length is unknown, goes
through a seeded shuffle buffer (``buffer_shuffled``). Parquet rows may be pre-tokenized (a
``tokens`` column of token ids, which wins over ``text``).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from indexer.errors import CorpusError, one_line
from indexer.inputs.corpus_counters import CorpusCounters, bad_record, decode
from indexer.inputs.corpus_files import Span, check_text_column, parquet_text_records, row_range_cells

ORDER_SALT = 0x0DE5  # mixed with the run's seed, so the order is independent of the examples' sampling
SHUFFLE_WINDOW = 256  # shuffled Parquet rows fetched together (one row group in memory at a time)


def permutation(n: int, seed: int) -> np.ndarray:
    """The seeded order of ``n`` records (a function of the seed and n only)."""
    return np.random.default_rng([seed, ORDER_SALT]).permutation(n)


def shuffled_list(records: list, counters: CorpusCounters, seed: int, span: Span = None) -> Iterator:
    counters.documents_in_source = len(records)
    for i in spanned(permutation(len(records), seed), span):
        yield records[i]


def spanned(order: np.ndarray, span: Span) -> np.ndarray:
    """The positions ``span`` of a read order (all of it for None)."""
    return order if span is None else order[span[0]:span[1]]


def buffer_shuffled(items: Iterator, size: int, seed: int) -> Iterator:
    """A seeded shuffle buffer (as ``IterableDataset.shuffle`` does, keeping each item's doc_id):
    fill ``size`` slots, then hand out a random slot and refill it with the next item."""
    rng = np.random.default_rng([seed, ORDER_SALT])
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(size))
        yield buffer[i]
        buffer[i] = item
    for i in rng.permutation(len(buffer)):
        yield buffer[i]


def token_ids(value: Any, where: str, counters: CorpusCounters, skip: bool) -> np.ndarray | None:
    """A ``tokens`` cell as int64 ids, or None (counted) if it is not a list of non-negative ints."""
    if value is None:
        return np.zeros(0, np.int64)
    try:
        ids = np.asarray(value)
    except (TypeError, ValueError):
        ids = None
    if ids is None or ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu") or (ids.size and ids.min() < 0):
        bad_record(counters, skip, f"{where}: 'tokens' must be a list of non-negative integer token ids")
        return None
    return ids.astype(np.int64)


def parquet_rows(path: str, counters: CorpusCounters, skip: bool, order: str, seed: int,
                 span: Span = None) -> Iterator:
    """Rows of a Parquet corpus: its ``tokens`` column if it has one, else ``text`` (positions
    ``span`` of the read order only, if given)."""
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError...
        raise CorpusError(f"{path}: not a readable Parquet file ({e})") from None
    names = file.schema_arrow.names
    if "tokens" not in names:
        if order == "file":
            yield from parquet_text_records(path, counters, span)
            return
        column = "text"
        if column not in names:
            raise CorpusError(f"{path}: no 'text' or 'tokens' column (columns: {', '.join(names)})")
        check_text_column(path, file)
    else:
        column = "tokens"
    cells = _parquet_cells(file, column, order, seed, counters, span)
    while True:
        try:
            doc_id, value = next(cells)
        except StopIteration:
            return
        except Exception as e:  # a corrupt page: pyarrow raises OSError, ArrowInvalid...
            raise CorpusError(f"{path}: corrupt Parquet data ({one_line(e)})") from None
        if column == "text":
            yield doc_id, decode(value, counters) if isinstance(value, bytes) else (value or "")
            continue
        ids = token_ids(value, f"{path}: row {doc_id}", counters, skip)
        if ids is not None:
            yield doc_id, ids


def _parquet_cells(file: Any, column: str, order: str, seed: int, counters: CorpusCounters,
                   span: Span) -> Iterator[tuple[int, Any]]:
    """``(row, value)`` of one column, in file order or in a seeded permutation fetched a
    window at a time, each window reading the row groups it touches once."""
    meta = file.metadata
    if order == "file":
        yield from row_range_cells(file, column, span)
        return
    counters.documents_in_source = meta.num_rows
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    perm = spanned(permutation(meta.num_rows, seed), span)
    for lo in range(0, len(perm), SHUFFLE_WINDOW):
        window = perm[lo : lo + SHUFFLE_WINDOW]
        groups = np.searchsorted(starts, window, side="right") - 1
        values: dict[int, Any] = {}
        for g in np.unique(groups):
            cells = file.read_row_group(int(g), columns=[column]).column(0)
            for row in window[groups == g]:
                values[int(row)] = cells[int(row - starts[g])].as_py()
        for row in window:
            yield int(row), values[int(row)]
