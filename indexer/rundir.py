"""The output directory of a run: refusing to clobber, checkpoints, and the final recorder state.

``DIR/checkpoint.npz`` holds every recorder state, the stream position and the run config,
written atomically (temp file + rename) every N batches; ``--resume`` reads it back.
``DIR/state.npz`` is the final recorder state of a finished run, which `neuroscope merge`
combines across shards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import IndexDirError

CHECKPOINT = "checkpoint.npz"
FINAL_STATE = "state.npz"
MANIFEST = "manifest.json"


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


def json_array(value: Any) -> np.ndarray:
    """A JSON-able value as a uint8 array, to ride inside an .npz."""
    return np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)


def from_json_array(array: np.ndarray) -> Any:
    return json.loads(bytes(array.astype(np.uint8)).decode())
