"""The output folder of a run: create it, or check that it may be used; never delete anything
but an index."""

from __future__ import annotations

import shutil
from pathlib import Path

from indexer.errors import IndexDirError
from indexer.run.checkpoint import CHECKPOINT
from indexer.store.manifest import MANIFEST


def prepare_out_dir(out: str, resume: bool, overwrite: bool) -> Path:
    """Create ``out`` or check that it may be used; never deletes anything but an index."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise IndexDirError(f"--out {out} is a file, not a directory")
    entries = list(path.iterdir()) if path.is_dir() else []
    if resume:
        if not (path / CHECKPOINT).is_file():
            raise IndexDirError(f"--resume: no checkpoint in {out} (nothing to resume; drop --resume to start)")
        return path
    if entries:
        if not overwrite:
            raise IndexDirError(
                f"--out {out} is not empty; use --resume to continue it, --overwrite to replace it, or another folder"
            )
        if not any((path / marker).exists() for marker in (MANIFEST, CHECKPOINT)):
            raise IndexDirError(f"--overwrite: {out} does not look like a neuroscope index; refusing to delete it")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
