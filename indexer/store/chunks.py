"""Saved chunks: the arrays of one finished piece of a long re-run (an analysis, a replay),
kept under a folder as ``chunk-N-DIGEST.npz`` so a killed run reads them back instead of
computing them again. The digest names the chunk's inputs: other inputs, another name."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from indexer.store.writer import atomic_write_bytes


def sequence_digest(sequences: Iterable[np.ndarray], salt: bytes = b"") -> str:
    """A hex digest of token sequences (and ``salt``): names a saved chunk by its inputs."""
    return hashlib.sha1(salt + b"".join(np.asarray(q, np.int64).tobytes() + b"|" for q in sequences)).hexdigest()


def saved_chunk(folder: Path, n: int, digest: str, compute: Callable[[], dict[str, np.ndarray]]
                ) -> tuple[dict[str, np.ndarray], bool]:
    """Chunk ``n``'s arrays: read back from ``folder`` when a run saved them under the same
    ``digest``, else ``compute()``'s, saved atomically as they come; and whether they were computed."""
    path = Path(folder) / f"chunk-{n:05d}-{digest[:16]}.npz"
    if path.is_file():
        with np.load(path) as saved:
            return {k: saved[k] for k in saved.files}, False
    arrays = compute()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return arrays, True
