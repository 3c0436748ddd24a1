"""Which indexes one viewer serves, and the short names its links use (``?ix=NAME``).

``neuroscope view DIR [DIR ...]``: each DIR is an index (it has a manifest), or a folder whose
sub-folders are indexes (one level down, in name order). An index is named after its folder;
two folders with the same name are told apart by their parent (``a/demo``, ``b/demo``). The
list travels to the app in $NEUROSCOPE_INDEX, joined with ``os.pathsep``.

No Streamlit here: the command line resolves the list before the server starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from indexer.errors import IndexDirError
from indexer.store.manifest import MANIFEST

INDEX_ENV = "NEUROSCOPE_INDEX"


def is_index(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def expand(dirs: list[Path | str]) -> list[Path]:
    """Every index the arguments name, in order, each once; a clear error for a folder that is
    neither an index nor a folder of indexes."""
    out: list[Path] = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise IndexDirError(f"{d}: no such folder")
        found = [d] if is_index(d) else sorted(p for p in d.iterdir() if p.is_dir() and is_index(p))
        if not found:
            raise IndexDirError(f"{d}: not an index (no {MANIFEST}) and holds no index folders")
        out += [p.resolve() for p in found if p.resolve() not in out]
    return out


def names(paths: list[Path]) -> dict[str, Path]:
    """Short, unique, URL-safe names: the folder's name, with its parents' names while that clashes."""
    depth = {p: 1 for p in paths}
    while True:
        named = {p: "/".join(p.parts[-depth[p]:]) for p in paths}
        clash = {n for n in named.values() if list(named.values()).count(n) > 1}
        if not clash:
            return {n: p for p, n in named.items()}
        for p, n in named.items():
            if n in clash and depth[p] < len(p.parts):
                depth[p] += 1


def to_env(paths: list[Path]) -> str:
    return os.pathsep.join(str(p) for p in paths)


def from_env(value: str) -> list[Path]:
    return [Path(p) for p in value.split(os.pathsep) if p]
