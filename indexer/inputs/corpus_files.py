"""Records of a corpus file in file order: ``(doc_id, text)`` from JSON Lines, JSON, Parquet
(a ``text`` column) and plain text (the whole file is one document).

A UTF-8 byte-order mark is dropped; invalid UTF-8 is replaced and counted; a malformed record
(not JSON, nested too deeply, no ``text`` string, a non-string Parquet value) is an error naming
the file and line, or, with ``skip_bad_records``, counted: JSON and JSON Lines readers hand it on as a
``BadRecord`` in its place, and a JSON Lines text with replaced bytes as ``Repaired``, both
counted where the stream reaches them (``corpus.read_documents``), in whatever order.
JSON Lines files are read line by line; a huge record's line is dropped as soon as its text is out.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Tuple

from indexer.errors import CorpusError, one_line
from indexer.inputs.corpus_counters import BadRecord, CorpusCounters, Repaired, decode

BOM = b"\xef\xbb\xbf"
Span = Optional[Tuple[int, int]]  # records [start, stop) of the read order; None: all


def file_records(path: str, counters: CorpusCounters) -> Iterator[tuple[int, str | BadRecord]]:
    """``(doc_id, text or BadRecord)`` of every record of a local corpus file, in file order."""
    suffix = Path(path).suffix
    if suffix == ".parquet":
        return parquet_text_records(path, counters)
    if suffix == ".txt":
        return _text_file(path, counters)
    return _json_records(path, counters)


def _text_file(path: str, counters: CorpusCounters) -> Iterator[tuple[int, str]]:
    data = strip_bom(read_bytes(path))
    text = decode(data, counters)
    del data
    yield 0, text


def read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {path}: {e.strerror}") from None


def strip_bom(data: bytes) -> bytes:
    return data[len(BOM):] if data.startswith(BOM) else data


def check_text_column(path: str, file: Any) -> None:
    """CorpusError unless the Parquet file's ``text`` column holds strings (or bytes)."""
    import pyarrow as pa

    kind = file.schema_arrow.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_null(kind)):
        raise CorpusError(f"{path}: the 'text' column holds {kind}, not strings")


def parquet_text_records(path: str, counters: CorpusCounters, span: Span = None) -> Iterator[tuple[int, str]]:
    """The ``text`` column of a Parquet file, row by row (None: an empty document); only rows
    ``span`` = ``[start, stop)`` if given."""
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError...
        raise CorpusError(f"{path}: not a readable Parquet file ({one_line(e)})") from None
    if "text" not in file.schema_arrow.names:
        raise CorpusError(f"{path}: no 'text' column (columns: {', '.join(file.schema_arrow.names)})")
    check_text_column(path, file)
    cells = row_range_cells(file, "text", span)
    next_row = span[0] if span else 0
    while True:
        try:
            doc_id, text = next(cells)
        except StopIteration:
            return
        except Exception as e:  # a corrupt page or footer: pyarrow raises OSError, ArrowInvalid...
            raise CorpusError(f"{path}: corrupt Parquet data after record {next_row} ({one_line(e)})") from None
        if isinstance(text, bytes):
            text = decode(text, counters)
        yield doc_id, text or ""
        next_row = doc_id + 1


def row_range_cells(file: Any, column: str, span: Span = None) -> Iterator[tuple[int, Any]]:
    """``(row, value)`` of one column of a ``ParquetFile`` in file order, rows ``span`` only if
    given: the row groups before it are not read."""
    start, stop = span or (0, file.metadata.num_rows)
    row = 0
    for g in range(file.metadata.num_row_groups):
        size = file.metadata.row_group(g).num_rows
        if row + size <= start:
            row += size
            continue
        if row >= stop:
            return
        for batch in file.iter_batches(columns=[column], batch_size=256, row_groups=[g]):
            for value in batch.column(0).to_pylist():
                if start <= row < stop:
                    yield row, value
                row += 1


def _json_records(path: str, counters: CorpusCounters) -> Iterator[tuple[int, str | Repaired | BadRecord]]:
    if path.endswith(".json"):
        data = strip_bom(read_bytes(path))
        whole = _whole_json(path, data, counters)
        del data
        if whole is not None:
            yield from _json_array(path, whole)
            return
    for line_no, raw in enumerate(_lines(path), start=1):
        text = _json_line(path, line_no, raw)
        del raw
        if text is not None:
            yield line_no - 1, text


def jsonl_record_count(path: str) -> int:
    """The records of a JSON Lines file (its non-blank lines), counted without parsing them
    (once per process and version of the file: every piece of a shuffled file needs it)."""
    try:
        stat = Path(path).stat()
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {path}: {e.strerror}") from None
    return _counted(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _counted(path: str, size: int, mtime_ns: int) -> int:
    return sum(not _blank(line_no, raw) for line_no, raw in enumerate(_lines(path), start=1))


def jsonl_records_at(path: str, positions: Sequence[int]) -> Iterator[tuple[int, str | Repaired | BadRecord]]:
    """``(doc_id, text)`` of the JSON Lines records at ``positions`` (their ranks among the
    records, in the order given); only those lines are parsed."""
    wanted = {int(p): i for i, p in enumerate(positions)}
    found: dict[int, tuple[int, str | Repaired | BadRecord]] = {}
    ascending = list(wanted) == sorted(wanted)
    last = max(wanted, default=-1)
    rank = -1
    for line_no, raw in enumerate(_lines(path), start=1):
        if _blank(line_no, raw):
            continue
        rank += 1
        if rank in wanted:
            record = (line_no - 1, _json_line(path, line_no, raw))
            if ascending:
                yield record
            else:
                found[rank] = record
        if rank >= last if ascending else len(found) == len(wanted):
            break
    for p in ([] if ascending else positions):
        yield found[int(p)]


def _blank(line_no: int, raw: bytes) -> bool:
    return not (strip_bom(raw) if line_no == 1 else raw).strip()


def _json_line(path: str, line_no: int, raw: bytes) -> str | Repaired | BadRecord | None:
    """The ``text`` of one JSON Lines record (Repaired if bytes were replaced), a BadRecord, or
    None for a blank line."""
    if _blank(line_no, raw):
        return None
    if line_no == 1:
        raw = strip_bom(raw)
    decoded = CorpusCounters()
    try:
        record = json.loads(decode(raw, decoded))
    except json.JSONDecodeError as e:
        return BadRecord(f"{path}:{line_no}: not valid JSON ({e.msg})")
    except RecursionError:
        return BadRecord(f"{path}:{line_no}: JSON nested too deeply")
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        return BadRecord(f"{path}:{line_no}: record has no 'text' string field")
    return Repaired(text) if decoded.utf8_replaced else text


def _lines(path: str) -> Iterator[bytes]:
    """The lines of a file, read one at a time (without their line ends)."""
    try:
        with open(path, "rb") as f:
            for raw in f:
                yield raw.rstrip(b"\r\n")
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {path}: {e.strerror}") from None


def _whole_json(path: str, data: bytes, counters: CorpusCounters) -> object | None:
    """The parsed file if it is one JSON document, None if it looks like JSON Lines."""
    decoded = CorpusCounters()  # counted only if the file is one document: else lines count
    try:
        whole = json.loads(decode(data, decoded))
    except json.JSONDecodeError:
        return None
    except RecursionError:
        return BadRecord(f"{path}: JSON nested too deeply")
    counters.utf8_replaced += decoded.utf8_replaced
    return whole


def _json_array(path: str, whole: object) -> Iterator[tuple[int, str | BadRecord]]:
    if isinstance(whole, BadRecord):
        yield 0, whole
        return
    items = whole if isinstance(whole, list) else [whole]
    for i, record in enumerate(items):
        text = record.get("text") if isinstance(record, dict) else None
        yield i, text if isinstance(text, str) else BadRecord(f"{path}: item {i} has no 'text' string field")
