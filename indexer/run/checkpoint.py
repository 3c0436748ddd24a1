"""Recorder states on disk: checkpoints (``checkpoint.npz``) and final states (``state.npz``).

One ``.npz`` holds every site's recorder state, keyed ``"<site>/<layer>/<recorder>/<array>"``,
plus JSON entries (the run config and its progress) stored as uint8 arrays.
"""

from __future__ import annotations

import io
import json
import zlib
from typing import Any

import numpy as np

from indexer.forward.sites import Site
from indexer.recorders import FeatureRecorders, default_backend

CHECKPOINT = "checkpoint.npz"
FINAL_STATE = "state.npz"


def site_salt(seed: int, site: Site) -> int:
    """The sampling salt of a site: differs per site, fixed by the seed."""
    return zlib.crc32(f"{seed}:{site.key}".encode()) & 0x7FFFFFFF


def save_states(recorders: dict[Site, FeatureRecorders], extra: dict[str, Any] | None = None) -> bytes:
    """All recorder states (and JSON-able ``extra`` entries) as the bytes of one .npz file."""
    arrays = {key: json_array(value) for key, value in (extra or {}).items()}
    for site, rec in recorders.items():
        for key, value in rec.state().items():
            arrays[f"{site.key}/{key}"] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def load_states(data: bytes, plan: list[Site], device: str) -> tuple[dict[Site, FeatureRecorders], dict[str, Any]]:
    """Recorders for ``plan`` from bytes written by ``save_states``, and the extra entries."""
    with np.load(io.BytesIO(data)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    backend = default_backend(device)
    recorders = {}
    for site in plan:
        prefix = f"{site.key}/"
        state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        recorders[site] = FeatureRecorders.from_state(state, backend=backend, device=device)
    extra = {k: from_json_array(v) for k, v in arrays.items() if "/" not in k}
    return recorders, extra


def read_extra(data: bytes, key: str) -> Any:
    """One JSON entry of a state file, without loading the recorders."""
    with np.load(io.BytesIO(data)) as npz:
        return from_json_array(npz[key])


def json_array(value: Any) -> np.ndarray:
    """A JSON-able value as a uint8 array, to ride inside an .npz."""
    return np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)


def from_json_array(array: np.ndarray) -> Any:
    return json.loads(bytes(array.astype(np.uint8)).decode())
