"""The export's folder and its files: refusals before anything is written, atomic writes
(a temporary name, then a rename), and ``export.json``: first a marker naming the entries that
are not the export's, at the end the summary with the entries it wrote.

A folder that holds an earlier export, finished or interrupted, is replaced: only what that
export wrote is removed, so nothing else a user keeps there is touched.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from indexer.errors import IndexDirError

MARKER = "export.json"


def prepare(out: Path, index_dir: Path) -> set[str]:
    """Make ``out`` ready: refuse a folder inside the index, a file, or a non-empty folder that
    holds no earlier export; remove what an earlier (or interrupted) export wrote. Returns the
    names of the entries left there (a user's own files), which ``finish`` does not claim."""
    if out.resolve() == index_dir.resolve() or index_dir.resolve() in out.resolve().parents:
        raise IndexDirError(f"{out}: the export must go outside the index folder")
    if out.exists() and not out.is_dir():
        raise IndexDirError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        for path in _earlier_export(out):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    kept = {p.name for p in out.iterdir()} - {MARKER}
    # Until finish() replaces it, the marker says which entries are not ours: an interrupted
    # export is replaced by the next one like a finished one.
    write_json(out / MARKER, {"status": "in progress, or interrupted: export into this folder again",
                              "kept": sorted(kept)}, indent=2)
    return kept


def _earlier_export(out: Path) -> list[Path]:
    """The entries of ``out`` that an earlier export wrote (its marker says which); IndexDirError
    for a folder without one."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        marker = None
    if isinstance(marker, dict) and isinstance(marker.get("written"), list):
        names = {str(n) for n in marker["written"]}
    elif isinstance(marker, dict) and isinstance(marker.get("kept"), list):
        names = {p.name for p in out.iterdir()} - {str(n) for n in marker["kept"]}
    else:
        raise IndexDirError(f"{out} is not empty and holds no earlier export: choose a new folder")
    paths = [out / n for n in sorted(names | {MARKER})]
    return [p for p in paths if p.parent.resolve() == out.resolve()]  # never a path out of the folder


def finish(out: Path, summary: dict[str, Any], kept: set[str]) -> None:
    """Write ``export.json`` (what was exported, and the top-level entries written) last."""
    written = sorted(p.name for p in out.iterdir() if p.name != MARKER and p.name not in kept)
    write_json(out / MARKER, {**summary, "status": "complete", "written": written}, indent=2)


def dumps(obj: Any, indent: int | None = None) -> str:
    """JSON text: token strings exactly as stored (no ASCII or HTML escaping beyond JSON's own);
    NaN and infinity refused (the exporters write them as 0 or null)."""
    separators = (",", ": ") if indent else (",", ":")
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=indent, separators=separators)


def write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    write_bytes(path, (dumps(obj, indent) + "\n").encode())


def write_jsonl_gz(path: Path, rows: Iterable[Any]) -> None:
    """One JSON object per line, gzipped (level 5, as SAEDashboard's export writes them)."""
    text = "".join(dumps(row) + "\n" for row in rows)
    write_bytes(path, gzip.compress(text.encode(), compresslevel=5, mtime=0))


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file written under a temporary name and renamed to ``path`` once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
