"""Corpus specs: ``[NAME=]SPEC`` parsed into a ``CorpusSpec`` (what to read, under which name).

SPEC is an embedded corpus name (``data/corpora/NAME.parquet``), a local file (``.jsonl``,
``.json``, ``.parquet`` or ``.txt``), or ``hf:OWNER/NAME[:split]`` / ``hf:/path/to/dataset_dir[:split]``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import CorpusError
from indexer.inputs.data import corpora_dir

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
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
        return CorpusSpec(_checked_name(label, text) if hf_is_local(dataset) else label, "hf", dataset, split or "train")
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


def hf_is_local(location: str) -> bool:
    """Whether an ``hf:`` location names a local dataset folder rather than a hub id."""
    return location.startswith(("/", "./", "../", "~")) or Path(location).expanduser().is_dir()


def _checked_name(name: str, text: str) -> str:
    """Corpus names end up in folder names (contexts/corpus=NAME): keep them plain."""
    if not _NAME.match(name):
        raise CorpusError(f"{text!r}: corpus name {name!r} may hold only letters, digits and _.-; label it NAME=SPEC")
    return name
