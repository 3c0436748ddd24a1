"""Corpus specs -> documents.

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
dropped; a malformed record (not JSON, nested too deeply, no ``text`` string, a non-string
Parquet value) is an error naming the file and line, or, with ``skip_bad_records``, counted. A
document longer than ``MAX_DOC_CHARS`` is handed on in pieces of that size (same ``doc_id``),
so one huge line never reaches the tokenizer whole. JSON Lines files are read line by line.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from indexer.errors import CorpusError, hub_offline, one_line
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
    documents_used: int = 0  # documents at least one context of the stream came from
    documents_in_source: int | None = None  # records in the source, where known
    order: str = "file"  # the order documents were read in: 'file' or 'shuffle'
    kind: str = "text"  # 'text' or 'tokens' (pre-tokenized)

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "CorpusCounters":
        """Counters from a manifest's corpus entry (other keys are ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


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
        label = name or Path(dataset.rstrip("/")).name
        return CorpusSpec(_checked_name(label, text) if _hf_is_local(dataset) else label, "hf", dataset, split or "train")
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
        return _hf_dataset_records(spec, counters, skip, "file", 0)
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


def _check_text_column(path: str, file: Any) -> None:
    """CorpusError unless the Parquet file's ``text`` column holds strings (or bytes)."""
    import pyarrow as pa

    kind = file.schema_arrow.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_null(kind)):
        raise CorpusError(f"{path}: the 'text' column holds {kind}, not strings")


def _parquet_records(path: str, counters: CorpusCounters, skip: bool) -> Iterator[tuple[int, str]]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError...
        raise CorpusError(f"{path}: not a readable Parquet file ({one_line(e)})") from None
    if "text" not in file.schema_arrow.names:
        raise CorpusError(f"{path}: no 'text' column (columns: {', '.join(file.schema_arrow.names)})")
    _check_text_column(path, file)
    doc_id = 0
    batches = file.iter_batches(columns=["text"], batch_size=256)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:  # a corrupt page or footer: pyarrow raises OSError, ArrowInvalid...
            raise CorpusError(f"{path}: corrupt Parquet data after record {doc_id} ({one_line(e)})") from None
        for text in batch.column(0).to_pylist():
            if isinstance(text, bytes):
                text = _decode(text, counters)
            yield doc_id, text or ""
            doc_id += 1


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


# --- reading in order: file order or a seeded shuffle; text or token ids ---------------------

ORDER_SALT = 0x0DE5  # mixed with the run's seed, so the order is independent of the examples' sampling
SHUFFLE_WINDOW = 256  # shuffled Parquet rows fetched together (one row group in memory at a time)
HF_SHUFFLE_BUFFER = 10_000  # documents held by the shuffle buffer of a streamed hf: dataset


def read_documents(
    spec: CorpusSpec, counters: CorpusCounters, skip_bad_records: bool = False, order: str = "file", seed: int = 0
) -> Iterator[tuple[int, str | np.ndarray]]:
    """Yield ``(doc_id, text or token ids)`` for every non-empty document of a corpus.

    ``order='file'`` reads records as the source holds them. ``order='shuffle'`` reads them in
    a permutation seeded by ``seed`` (the same for any label of the corpus), so any prefix of
    the stream is a uniform sample of the whole corpus; a streamed ``hf:`` dataset, whose length
    is unknown, passes through a seeded shuffle buffer of ``HF_SHUFFLE_BUFFER`` documents
    instead. ``doc_id`` is always the record's index in file order.
    """
    counters.order = order
    for doc_id, content in _ordered_records(spec, counters, skip_bad_records, order, seed):
        if isinstance(content, np.ndarray):
            counters.kind = "tokens"
            empty = len(content) == 0
        else:
            empty = not content.strip()
        if empty:
            counters.empty_documents += 1
            continue
        counters.documents += 1
        yield doc_id, content


def _ordered_records(spec: CorpusSpec, counters: CorpusCounters, skip: bool, order: str, seed: int) -> Iterator:
    if spec.kind == "hf":
        return _hf_dataset_records(spec, counters, skip, order, seed)
    if Path(spec.location).suffix == ".parquet":
        return _parquet_rows(spec.location, counters, skip, order, seed)
    records = _records(spec, counters, skip)  # JSON / JSON Lines / text: held in memory anyway
    if order == "file":
        return records
    return _shuffled_list(list(records), counters, seed)


def _permutation(n: int, seed: int) -> np.ndarray:
    """The seeded order of ``n`` records (a function of the seed and n only)."""
    return np.random.default_rng([seed, ORDER_SALT]).permutation(n)


def _shuffled_list(records: list, counters: CorpusCounters, seed: int) -> Iterator:
    counters.documents_in_source = len(records)
    for i in _permutation(len(records), seed):
        yield records[i]


def _token_ids(value: Any, where: str, counters: CorpusCounters, skip: bool) -> np.ndarray | None:
    """A ``tokens`` cell as int64 ids, or None (counted) if it is not a list of non-negative ints."""
    if value is None:
        return np.zeros(0, np.int64)
    try:
        ids = np.asarray(value)
    except (TypeError, ValueError):
        ids = None
    if ids is None or ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu") or (ids.size and ids.min() < 0):
        _bad(counters, skip, f"{where}: 'tokens' must be a list of non-negative integer token ids")
        return None
    return ids.astype(np.int64)


def _parquet_rows(path: str, counters: CorpusCounters, skip: bool, order: str, seed: int) -> Iterator:
    """Rows of a Parquet corpus: its ``tokens`` column if it has one, else ``text``."""
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError...
        raise CorpusError(f"{path}: not a readable Parquet file ({e})") from None
    names = file.schema_arrow.names
    if "tokens" not in names:
        if order == "file":
            yield from _parquet_records(path, counters, skip)
            return
        column = "text"
        if column not in names:
            raise CorpusError(f"{path}: no 'text' or 'tokens' column (columns: {', '.join(names)})")
        _check_text_column(path, file)
    else:
        column = "tokens"
    cells = _parquet_cells(file, column, order, seed, counters)
    while True:
        try:
            doc_id, value = next(cells)
        except StopIteration:
            return
        except Exception as e:  # a corrupt page: pyarrow raises OSError, ArrowInvalid...
            raise CorpusError(f"{path}: corrupt Parquet data ({one_line(e)})") from None
        if column == "text":
            yield doc_id, _decode(value, counters) if isinstance(value, bytes) else (value or "")
            continue
        ids = _token_ids(value, f"{path}: row {doc_id}", counters, skip)
        if ids is not None:
            yield doc_id, ids


def _parquet_cells(file: Any, column: str, order: str, seed: int, counters: CorpusCounters) -> Iterator[tuple[int, Any]]:
    """``(row, value)`` of one column, in file order or in a seeded permutation fetched a
    window at a time, each window reading the row groups it touches once."""
    meta = file.metadata
    if order == "file":
        row = 0
        for batch in file.iter_batches(columns=[column], batch_size=256):
            for value in batch.column(0).to_pylist():
                yield row, value
                row += 1
        return
    counters.documents_in_source = meta.num_rows
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    perm = _permutation(meta.num_rows, seed)
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


# --- hf: datasets, from the hub, the local cache, or a local folder ------------------------------


def _hf_is_local(location: str) -> bool:
    return location.startswith(("/", "./", "../", "~")) or Path(location).expanduser().is_dir()


def _hf_open(spec: CorpusSpec) -> Any:
    """A ``datasets`` Dataset (random access) or IterableDataset (a hub stream) for an hf: spec."""
    import datasets

    where = f"hf:{spec.location}:{spec.split}"
    if _hf_is_local(spec.location):
        folder = Path(spec.location).expanduser()
        if not folder.is_dir():
            raise CorpusError(f"{where}: no such dataset folder {folder}")
        try:
            if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
                loaded = datasets.load_from_disk(str(folder))  # written by save_to_disk
                if isinstance(loaded, datasets.DatasetDict):
                    if spec.split not in loaded:
                        raise CorpusError(f"{where}: no split {spec.split!r} (splits: {', '.join(loaded)})")
                    loaded = loaded[spec.split]
                return loaded
            return datasets.load_dataset(str(folder), split=spec.split)  # parquet / jsonl / ... files
        except CorpusError:
            raise
        except Exception as e:
            raise CorpusError(f"{where}: cannot read the dataset folder ({one_line(e)})") from None
    if hub_offline():
        try:
            return datasets.load_dataset(spec.location, split=spec.split)  # resolved from the local cache
        except Exception as e:
            raise CorpusError(
                f"{where}: not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1; "
                f"{one_line(e)}); download it once online, or pass hf:/path/to/dataset_dir or a file"
            ) from None
    try:
        return datasets.load_dataset(spec.location, split=spec.split, streaming=True)
    except Exception as e:  # network, missing dataset, bad split...
        raise CorpusError(f"{where}: cannot stream ({one_line(e)})") from None


def _hf_dataset_records(spec: CorpusSpec, counters: CorpusCounters, skip: bool, order: str, seed: int) -> Iterator:
    import datasets

    where = f"hf:{spec.location}:{spec.split}"
    data = _hf_open(spec)
    try:
        if isinstance(data, datasets.Dataset):
            counters.documents_in_source = len(data)
            rows = range(len(data)) if order == "file" else _permutation(len(data), seed)
            records = ((int(i), data[int(i)]) for i in rows)
        else:
            records = enumerate(data)
            if order == "shuffle":
                records = buffer_shuffled(records, HF_SHUFFLE_BUFFER, seed)
        for doc_id, record in records:
            if "tokens" in record:
                ids = _token_ids(record["tokens"], f"{where}: row {doc_id}", counters, skip)
                if ids is not None:
                    yield doc_id, ids
                continue
            text = record.get("text", record.get("content"))
            yield doc_id, text if isinstance(text, str) else ""
    except CorpusError:
        raise
    except Exception as e:  # a stream that breaks mid-way
        raise CorpusError(f"{where}: cannot read ({one_line(e)})") from None


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
