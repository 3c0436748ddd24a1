"""manifest.json: its name, format version and statuses, and reading it back.

The manifest is written last (by ``indexer.run``), so its presence and ``status`` say whether
an index is complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import IndexDirError

MANIFEST = "manifest.json"
STATUSES = ("complete", "partial")
FORMAT_VERSION = 1


def manifest_text(manifest: Mapping[str, Any]) -> str:
    """The manifest as indented JSON (numpy scalars and arrays, paths allowed)."""
    return json.dumps(manifest, indent=2, default=_json_default) + "\n"


def read_manifest(index_dir: Path | str) -> dict[str, Any]:
    """The manifest of an index; IndexDirError if there is none or it is not valid JSON."""
    root = Path(index_dir)
    if not root.is_dir():
        raise IndexDirError(f"{root}: no such directory (expected an index made by `neuroscope index`)")
    path = root / MANIFEST
    if not path.is_file():
        raise IndexDirError(f"{root} is not a neuroscope index: expected {path}, written when indexing ends")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IndexDirError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise IndexDirError(f"{path} holds a {type(manifest).__name__} but expected a JSON object")
    check_format_version(manifest, root)
    return manifest


def check_format_version(manifest: Mapping[str, Any], root: Path | str) -> None:
    """IndexDirError naming the version that wrote an index this version cannot read.
    (A manifest without ``format_version`` predates the field and is read as version 1.)"""
    version = manifest.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        wrote = manifest.get("versions", {}).get("neuroscope") if isinstance(manifest.get("versions"), dict) else None
        by = f" (neuroscope {wrote})" if wrote else ""
        raise IndexDirError(
            f"{root} was written in index format version {version!r}{by}; this neuroscope reads format "
            f"version {FORMAT_VERSION}: rebuild the index, or use the neuroscope that wrote it"
        )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"manifest value of type {type(obj).__name__} is not JSON-serialisable")
