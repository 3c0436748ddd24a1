"""Corpus specs -> documents.

A corpus spec is ``[NAME=]SPEC`` where SPEC is
- an embedded corpus name (``data/corpora/NAME.parquet``),
- a local file: ``.jsonl`` / ``.json`` (objects with a ``text`` field), ``.parquet`` (a ``text``
  column) or ``.txt`` (the whole file is one document),
- ``hf:OWNER/NAME[:split]``, streamed with Hugging Face ``datasets``.

``doc_id`` is the 0-based index of the record in its source, so it is stable whatever is
skipped. Empty documents are skipped and counted; invalid UTF-8 (and lone UTF-16 surrogates
from JSON escapes) is replaced and counted; a UTF-8 byte-order mark is dropped; a malformed
record (not JSON, nested too deeply, no ``text`` string, a non-string Parquet value) is an
error naming the file and line, or, with ``skip_bad_records``, counted. A document longer than
``MAX_DOC_CHARS`` is handed on in pieces of that size (same ``doc_id``), so one huge line never
reaches the tokenizer whole. JSON Lines files are read line by line.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from indexer.errors import CorpusError, hub_offline
from indexer.inputs.data import corpora_dir

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
MAX_DOC_CHARS = 1 << 20  # longer documents are cut into pieces of this many characters
BOM = b"\xef\xbb\xbf"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class CorpusSpec:
    """A parsed corpus spec.

    Attributes:
        name: the label every row of this corpus carries.
        kind: 'embedded', 'file' or 'hf'.
        location: the file path, or the dataset id for 'hf'.
        split: the dataset split for 'hf'.
    """

    name: str
    kind: str
    location: str
    split: str = "train"

    def __str__(self) -> str:
        where = f"hf:{self.location}:{self.split}" if self.kind == "hf" else self.location
        return f"{self.name}={where}"


@dataclass
class CorpusCounters:
    """What was read, and what was skipped or repaired, per corpus."""

    documents: int = 0
    empty_documents: int = 0
    bad_records: int = 0
    utf8_replaced: int = 0
    bad_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}


def embedded_corpora() -> list[str]:
    return sorted(p.stem for p in corpora_dir().glob("*.parquet"))


def parse_corpus_spec(text: str) -> CorpusSpec:
    """Parse ``[NAME=]SPEC``; raises CorpusError for a spec that names nothing."""
    head, sep, tail = text.partition("=")
    name, spec = (head, tail) if sep and _NAME.match(head) else ("", text)
    if not spec:
        raise CorpusError(f"empty corpus spec {text!r}")
    if spec.startswith("hf:"):
        dataset, _, split = spec[3:].partition(":")
        if not dataset:
            raise CorpusError(f"{text!r}: expected hf:OWNER/NAME[:split]")
        return CorpusSpec(name or dataset.split("/")[-1], "hf", dataset, split or "train")
    if "/" not in spec and "." not in spec:
        path = corpora_dir() / f"{spec}.parquet"
        if not path.is_file():
            raise CorpusError(
                f"unknown corpus {spec!r}; embedded corpora: {', '.join(embedded_corpora()) or '(none)'}; "
                f"or give a file ({', '.join(FILE_SUFFIXES)}) or hf:OWNER/NAME[:split]"
            )
        return CorpusSpec(name or spec, "embedded", str(path))
    path = Path(spec).expanduser()
    if path.suffix not in FILE_SUFFIXES:
        raise CorpusError(f"{spec}: unsupported corpus file type; expected one of {', '.join(FILE_SUFFIXES)}")
    if path.is_dir():
        raise CorpusError(f"corpus file {spec} is a directory, not a file")
    if path.exists() and not path.is_file():
        raise CorpusError(f"corpus file {spec} is not a regular file (a FIFO, socket or device); save it to a file")
    if not path.is_file():
        raise CorpusError(f"corpus file {spec} does not exist")
    if not os.access(path, os.R_OK):
        raise CorpusError(f"corpus file {spec} is not readable")
    return CorpusSpec(_checked_name(name or path.stem, text), "file", str(path))


def _checked_name(name: str, text: str) -> str:
    """Corpus names end up in folder names (contexts/corpus=NAME): keep them plain."""
    if not _NAME.match(name):
        raise CorpusError(f"{text!r}: corpus name {name!r} may hold only letters, digits and _.-; label it NAME=SPEC")
    return name


def iter_documents(
    spec: CorpusSpec, counters: CorpusCounters, skip_bad_records: bool = False
) -> Iterator[tuple[int, str]]:
    """Yield ``(doc_id, text)`` for every non-empty document of a corpus, in a fixed order."""
    records = _records(spec, counters, skip_bad_records)
    for doc_id, text in records:
        if not text.strip():
            counters.empty_documents += 1
            continue
        counters.documents += 1
        text = _valid_unicode(text, counters)
        for start in range(0, len(text), MAX_DOC_CHARS):
            yield doc_id, text[start:start + MAX_DOC_CHARS]


def _valid_unicode(text: str, counters: CorpusCounters) -> str:
    """``text`` with lone surrogates (from JSON ``\\ud800`` escapes) replaced, and counted."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        counters.utf8_replaced += 1
        return text.encode("utf-8", errors="replace").decode("utf-8")


def _records(spec: CorpusSpec, counters: CorpusCounters, skip: bool) -> Iterator[tuple[int, str]]:
    if spec.kind == "hf":
        return _hf_records(spec)
    suffix = Path(spec.location).suffix
    if suffix == ".parquet":
        return _parquet_records(spec.location, counters, skip)
    if suffix == ".txt":
        return iter([(0, _decode(_strip_bom(_read_bytes(spec.location)), counters))])
    return _json_records(spec.location, counters, skip)


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {path}: {e.strerror}") from None


def _strip_bom(data: bytes) -> bytes:
    return data[len(BOM):] if data.startswith(BOM) else data


def _decode(data: bytes, counters: CorpusCounters) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        counters.utf8_replaced += 1
        return data.decode("utf-8", errors="replace")


def _parquet_records(path: str, counters: CorpusCounters, skip: bool) -> Iterator[tuple[int, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError...
        raise CorpusError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
    if "text" not in file.schema_arrow.names:
        raise CorpusError(f"{path}: no 'text' column (columns: {', '.join(file.schema_arrow.names)})")
    kind = file.schema_arrow.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_null(kind)):
        raise CorpusError(f"{path}: the 'text' column holds {kind}, not strings")
    doc_id = 0
    batches = file.iter_batches(columns=["text"], batch_size=256)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:  # a corrupt page or footer: pyarrow raises OSError, ArrowInvalid...
            raise CorpusError(f"{path}: corrupt Parquet data after record {doc_id} ({_first_line(e)})") from None
        for text in batch.column(0).to_pylist():
            if isinstance(text, bytes):
                text = _decode(text, counters)
            yield doc_id, text or ""
            doc_id += 1


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _json_records(path: str, counters: CorpusCounters, skip: bool) -> Iterator[tuple[int, str]]:
    if path.endswith(".json"):
        data = _strip_bom(_read_bytes(path))
        whole = _whole_json(path, data, counters, skip)
        if whole is not None:
            yield from _json_array(path, whole, counters, skip)
            return
        del data
    for line_no, raw in enumerate(_lines(path), start=1):
        if line_no == 1:
            raw = _strip_bom(raw)
        if not raw.strip():
            continue
        line = _decode(raw, counters)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            _bad(counters, skip, f"{path}:{line_no}: not valid JSON ({e.msg})")
            continue
        except RecursionError:
            _bad(counters, skip, f"{path}:{line_no}: JSON nested too deeply")
            continue
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            _bad(counters, skip, f"{path}:{line_no}: record has no 'text' string field")
            continue
        yield line_no - 1, text


def _lines(path: str) -> Iterator[bytes]:
    """The lines of a file, read one at a time (without their line ends)."""
    try:
        with open(path, "rb") as f:
            for raw in f:
                yield raw.rstrip(b"\r\n")
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {path}: {e.strerror}") from None


def _whole_json(path: str, data: bytes, counters: CorpusCounters, skip: bool) -> object | None:
    """The parsed file if it is one JSON document, None if it looks like JSON Lines."""
    decoded = CorpusCounters()  # counted only if the file is one document: else lines count
    try:
        whole = json.loads(_decode(data, decoded))
    except json.JSONDecodeError:
        return None
    except RecursionError:
        _bad(counters, skip, f"{path}: JSON nested too deeply")
        return []
    counters.utf8_replaced += decoded.utf8_replaced
    return whole


def _json_array(path: str, whole: object, counters: CorpusCounters, skip: bool) -> Iterator[tuple[int, str]]:
    items = whole if isinstance(whole, list) else [whole]
    for i, record in enumerate(items):
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            _bad(counters, skip, f"{path}: item {i} has no 'text' string field")
            continue
        yield i, text


def _bad(counters: CorpusCounters, skip: bool, message: str) -> None:
    if not skip:
        raise CorpusError(message + " (use --skip-bad-records to skip such records)")
    counters.bad_records += 1
    if len(counters.bad_examples) < 5:
        counters.bad_examples.append(message)


def _hf_records(spec: CorpusSpec) -> Iterator[tuple[int, str]]:
    if hub_offline():
        raise CorpusError(
            f"hf:{spec.location} streams from the Hugging Face hub and this machine is offline "
            "(HF_HUB_OFFLINE=1); save the dataset as .parquet or .jsonl elsewhere and pass the file"
        )
    try:
        import datasets

        stream = datasets.load_dataset(spec.location, split=spec.split, streaming=True)
        for doc_id, record in enumerate(stream):
            text = record.get("text", record.get("content"))
            yield doc_id, text if isinstance(text, str) else ""
    except CorpusError:
        raise
    except Exception as e:  # network, missing dataset, bad split...
        raise CorpusError(f"hf:{spec.location}:{spec.split}: cannot stream ({str(e).splitlines()[0]})") from None
