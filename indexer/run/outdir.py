"""The output folder of a run: create it, or check that it may be used; never delete anything
but an index.

What an index consists of is known (``index_entries``): the manifest, the table files and
folders, the analyses, the state and checkpoint files, the context store, the lock and the
temporary files of interrupted writes. ``--overwrite`` deletes only those, and only when the folder really is an
index (its manifest says ``"format": "neuroscope-index"``, or it holds a checkpoint); other
files in it are kept and named. A folder that holds nothing but leftovers of a run killed
before its first checkpoint (a lock, temporary files, a context store) counts as empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from indexer.errors import IndexDirError
from indexer.run.checkpoint import CHECKPOINTS, FINAL_STATE
from indexer.run.context_store import STORE_FILES
from indexer.run.lock import LOCK, out_dir_lock
from indexer.store.manifest import MANIFEST
from indexer.store.schema import TABLES

TEMP_FILE = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]{8}$")  # indexer.store.writer.atomic_open's names


def index_entries() -> frozenset[str]:
    """The names an index folder may hold at its top level."""
    tables = {t.LOCATION.split("/")[0] for t in TABLES}
    return frozenset(tables | {MANIFEST, FINAL_STATE, LOCK, "analyses", *CHECKPOINTS, *STORE_FILES})


@contextlib.contextmanager
def claimed_out_dir(out: str, resume: bool, overwrite: bool, inputs: list[str] = ()) -> Iterator[Path]:
    """``prepare_out_dir`` while holding the folder's lock for the ``with`` block. A folder
    this call created is removed again if the block fails before writing anything."""
    path = _checked_path(out, inputs)
    created = not path.exists()
    prepare_out_dir(out, resume, overwrite, inputs, dry_run=True)  # refuse before touching anything
    try:
        with out_dir_lock(path):
            yield prepare_out_dir(out, resume, overwrite, inputs)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                if not meaningful_entries(path):  # nothing but a context store from before any checkpoint
                    for name in STORE_FILES:
                        (path / name).unlink(missing_ok=True)
                path.rmdir()  # only if empty
        raise


def prepare_out_dir(out: str, resume: bool, overwrite: bool, inputs: list[str] = (), dry_run: bool = False) -> Path:
    """Create ``out`` or check that it may be used; never deletes anything but an index."""
    path = _checked_path(out, inputs)
    entries = meaningful_entries(path)
    if resume:
        if not path.is_dir():
            raise IndexDirError(f"--resume: no checkpoint in {out} (nothing to resume; drop --resume to start)")
        if not dry_run:
            remove_orphans(path)
        return path
    if entries:
        if not overwrite:
            raise IndexDirError(
                f"--out {out} is not empty; use --resume to continue it, --overwrite to replace it, or another folder"
            )
        if not is_index_dir(path):
            raise IndexDirError(f"--overwrite: {out} does not look like a neuroscope index; refusing to delete it")
        if not dry_run:
            _delete_index(path)
    if not dry_run:
        path.mkdir(parents=True, exist_ok=True)
        remove_orphans(path)
    return path


def is_index_dir(path: Path) -> bool:
    """Whether ``path`` is a neuroscope index, finished or not: its manifest says so, or it holds
    a checkpoint and nothing else but index files."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        if isinstance(manifest, dict) and manifest.get("format") == "neuroscope-index":
            return True
    except (OSError, ValueError):
        pass
    names = {e.name for e in meaningful_entries(path)}
    return bool(names & set(CHECKPOINTS)) and names <= index_entries()


def remove_orphans(path: Path) -> list[Path]:
    """Delete the temporary files interrupted writes left in an index folder; returns them."""
    found = []
    known = index_entries()
    for entry in _entries(path):
        if TEMP_FILE.match(entry.name) and entry.is_file() and not entry.is_symlink():
            found.append(entry)
        elif entry.name in known and entry.is_dir() and not entry.is_symlink():
            for root, dirs, files in os.walk(entry):  # os.walk does not follow symlinks
                found += [Path(root) / f for f in files if TEMP_FILE.match(f)]
    for f in found:
        with contextlib.suppress(OSError):
            f.unlink()
    return found


def _checked_path(out: str, inputs: list[str]) -> Path:
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise IndexDirError(f"--out {out} is a file, not a directory")
    real = os.path.realpath(path)
    for item in inputs:
        other = os.path.realpath(Path(item).expanduser())
        if real == other or real.startswith(other + os.sep) or other.startswith(real + os.sep):
            raise IndexDirError(f"--out {out} is (or holds, or is inside) the input {item}; write to another folder")
    return path


def _entries(path: Path) -> list[Path]:
    try:
        return list(path.iterdir()) if path.is_dir() else []
    except OSError as e:
        raise IndexDirError(f"cannot list {path}: {e.strerror}") from None


def meaningful_entries(path: Path) -> list[Path]:
    """Entries other than the lock and temporary files; none if a context store is all there
    is besides them (the leftovers of a run killed before its first checkpoint)."""
    entries = [e for e in _entries(path) if e.name != LOCK and not TEMP_FILE.match(e.name)]
    return [] if {e.name for e in entries} <= set(STORE_FILES) else entries


def _delete_index(path: Path) -> None:
    known = index_entries() - {LOCK}
    kept = []
    for entry in meaningful_entries(path):
        if entry.name not in known:
            kept.append(entry.name)
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()  # a file, or a symlink (never followed)
        except OSError as e:
            raise IndexDirError(f"--overwrite: cannot delete {entry}: {e.strerror}") from None
    if kept:
        print(f"neuroscope: --overwrite kept files that are not part of an index: {', '.join(sorted(kept))}",
              file=sys.stderr)
