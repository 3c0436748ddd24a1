"""Recorder states on disk: checkpoints (``checkpoint.npz``) and final states (``state.npz``).

One ``.npz`` holds every site's recorder state, keyed ``"<site>/<layer>/<recorder>/<array>"``,
plus JSON entries (the run config and its progress) stored as uint8 arrays.

Every state file is sealed: a magic line, the SHA-256 of the ``.npz`` bytes, then the bytes.
A truncated, corrupted or edited file (a stream position changed by hand included) fails the
check and is refused (``CorruptState``). The last two checkpoints are kept
(``checkpoint.npz`` and ``checkpoint.prev.npz``): resuming falls back to the older one when
the newer is bad. The checksum catches accidents and careless edits, not a forger who
recomputes it. The magic line carries the state format's version (``STATE_VERSION``): a file of
another version is refused with a message naming both (version 2: the stats' sums became exact
integer limbs, ``indexer.recorders.exactsum``; version 3: the quantile sampler keeps a pool of
kept tokens instead of per-fine-bin slots, ``indexer.recorders.keep_rule``).

A state file is streamed to disk as it is hashed (``write_state_file``), never copied whole in
memory, and the recorders' states are produced one site at a time as it goes. When the recorders have not changed since the last checkpoint (a run's stream ends with
one), finalize makes ``state.npz`` a hard link to it instead of writing the same bytes again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import IndexDirError
from indexer.forward.sites import Site
from indexer.recorders import FeatureRecorders, default_backend
from indexer.store.killpoint import kill_point
from indexer.store.writer import atomic_open

CHECKPOINT = "checkpoint.npz"
PREVIOUS_CHECKPOINT = "checkpoint.prev.npz"
NEW_CHECKPOINT = "checkpoint.new.npz"  # written in full before the rotation
CHECKPOINTS = (CHECKPOINT, PREVIOUS_CHECKPOINT, NEW_CHECKPOINT)  # the order resume tries them in
FINAL_STATE = "state.npz"
STATE_VERSION = 3
MAGIC_PREFIX = b"NEUROSCOPE-STATE "
MAGIC = MAGIC_PREFIX + b"%d\n" % STATE_VERSION


class CorruptState(IndexDirError):
    """A state file is truncated, corrupted or was edited (its checksum does not match)."""


class StateVersionError(IndexDirError):
    """A state file was written in another state format version (by another neuroscope)."""


def unseal(data: bytes, where: str = "state file") -> bytes:
    """The payload of sealed bytes; CorruptState if the seal or checksum is wrong."""
    if data.startswith(MAGIC_PREFIX) and not data.startswith(MAGIC):
        version = data[len(MAGIC_PREFIX):len(MAGIC_PREFIX) + 8].split(b"\n")[0].decode("ascii", "replace")
        raise StateVersionError(f"{where} was written in state format version {version} (by another neuroscope); "
                                f"this neuroscope reads version {STATE_VERSION}: index again (--overwrite)")
    if not data.startswith(MAGIC):
        what = "is empty" if not data else "has no neuroscope checksum header (not written by this version, or damaged)"
        raise CorruptState(f"{where} {what}")
    digest, payload = data[len(MAGIC):len(MAGIC) + 32], data[len(MAGIC) + 32:]
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptState(f"{where} fails its checksum (truncated, corrupted or edited)")
    return payload


def read_state_file(path: Path) -> bytes:
    """The verified payload of a state file; CorruptState / IndexDirError in one line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IndexDirError(f"cannot read {path}: {e.strerror}") from None
    return unseal(data, str(path))


class _SealingSink:
    """The write-only, unseekable file ``np.savez`` streams a payload into: every byte is
    hashed on its way to ``f`` (unseekable, so zipfile never goes back to patch a header the
    hash has already seen); ``point``'s kill point is hit once ``half`` bytes are through."""

    def __init__(self, f: Any, point: str | None, half: int):
        self.f, self.point, self.half = f, point, half
        self.hash = hashlib.sha256()
        self.n = 0

    def write(self, data: Any) -> int:
        self.hash.update(data)
        self.f.write(data)
        before, self.n = self.n, self.n + len(data)
        if self.point and before < self.half <= self.n:
            self.f.flush()
            kill_point(self.point)
        return len(data)

    def tell(self) -> int:
        return self.n

    def read(self, *_: Any) -> bytes:  # present so numpy takes this for a file; never called
        raise OSError("write-only")

    def flush(self) -> None:
        pass


def write_state_file(path: Path, arrays: Iterable[tuple[str, np.ndarray]], point: str | None = None) -> None:
    """Write ``arrays`` (name, array pairs, produced one at a time) as a sealed ``.npz`` (the
    magic line, the payload's SHA-256, the payload: what ``unseal`` checks) atomically,
    streamed: neither the payload nor the whole state is ever copied in memory, only the
    array being written. ``point``'s kill point is hit in the middle of the first recorder
    array written."""
    with atomic_open(path) as f:
        f.write(MAGIC + bytes(32))  # the digest's place, filled in once the payload is through
        sink = _SealingSink(f, point, 0)
        _write_npz(sink, arrays)
        f.seek(len(MAGIC))
        f.write(sink.hash.digest())


def _write_npz(sink: Any, arrays: Iterable[tuple[str, np.ndarray]]) -> None:
    """What ``np.savez`` writes (a zip of ``NAME.npy`` members), one array at a time."""
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays:
            array = np.asanyarray(array)
            if isinstance(sink, _SealingSink) and sink.half == 0 and "/" in name:
                sink.half = sink.n + max(1, array.nbytes // 2)
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def write_checkpoint(out: Path, arrays: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write a checkpoint and keep the one before it as ``checkpoint.prev.npz``.

    The new file is written in full (atomically) under another name first, so at every moment
    at least one complete, checksummed checkpoint is on disk."""
    new, current, previous = out / NEW_CHECKPOINT, out / CHECKPOINT, out / PREVIOUS_CHECKPOINT
    write_state_file(new, arrays, point="checkpoint-write")
    if current.exists():
        os.replace(current, previous)
    kill_point("checkpoint-rotate")
    os.replace(new, current)


def checkpoint_as_state(out: Path) -> bool:
    """Make the newest checkpoint ``state.npz`` as well (a hard link: no second copy of ~200 KB
    per feature written), when the recorders have not changed since it was written; False
    where the file system has no hard links (the caller then writes the state)."""
    tmp = out / f".{FINAL_STATE}.link-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(out / CHECKPOINT, tmp)
    except OSError:
        return False
    kill_point("state-write")
    os.replace(tmp, out / FINAL_STATE)
    return True


def remove_checkpoints(out: Path) -> None:
    """Delete the checkpoints of a finished run."""
    for name in CHECKPOINTS:
        (out / name).unlink(missing_ok=True)


def read_checkpoint(out: Path, warn=None) -> bytes | None:
    """The payload of the newest good checkpoint in ``out``, or None if there is none at all.

    A bad newer one is reported through ``warn`` and the previous one used; IndexDirError
    if every checkpoint present is bad; StateVersionError at once for one of another version
    (its run was made by another neuroscope: an older checkpoint would not help)."""
    problems = []
    for name in CHECKPOINTS:
        path = out / name
        if not path.is_file():
            continue
        try:
            payload = read_state_file(path)
            _check_npz(payload, str(path))
        except StateVersionError:
            raise
        except IndexDirError as e:
            problems.append(str(e))
            continue
        if problems and warn is not None:
            warn(f"{'; '.join(problems)}; resuming from {path.name} instead")
        return payload
    if problems:
        raise CorruptState(f"no usable checkpoint: {'; '.join(problems)}; start again with --overwrite")
    return None


def _check_npz(payload: bytes, where: str) -> None:
    try:
        with np.load(io.BytesIO(payload)) as npz:
            from_json_array(npz["progress"])
            from_json_array(npz["config"])
    except Exception as e:  # a payload that passed the checksum but is not ours
        raise CorruptState(f"{where} is not a neuroscope checkpoint ({type(e).__name__})") from None


def site_salt(seed: int, site: Site) -> int:
    """The sampling salt of a site: differs per site, fixed by the seed."""
    return zlib.crc32(f"{seed}:{site.key}".encode()) & 0x7FFFFFFF


def state_arrays(recorders: dict[Site, FeatureRecorders],
                 extra: dict[str, Any] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """All recorder states (and JSON-able ``extra`` entries) as the (name, array) pairs of one
    .npz file, one site's state at a time (so a checkpoint holds one site's copy at most)."""
    for key, value in (extra or {}).items():
        yield key, json_array(value)
    for site, rec in recorders.items():
        for key, value in rec.state(copy=False).items():  # written before the next update: no copy
            yield f"{site.key}/{key}", np.asarray(value)


def save_states(recorders: dict[Site, FeatureRecorders], extra: dict[str, Any] | None = None) -> bytes:
    """``state_arrays`` as the bytes of one .npz file (what a Dask shard returns)."""
    buffer = io.BytesIO()
    _write_npz(buffer, state_arrays(recorders, extra))
    return buffer.getvalue()


def load_state_file(path: Path, plan: list[Site], device: str) -> tuple[dict[Site, FeatureRecorders], dict[str, Any]]:
    """``load_states`` of a sealed file (``state.npz``), with one-line errors for bad files."""
    payload = read_state_file(path)
    try:
        return load_states(payload, plan, device)
    except Exception as e:  # checksum fine but not the recorders this plan needs
        raise CorruptState(f"{path} does not hold the recorder states of this run ({type(e).__name__}: {e})") from None


def load_states(data: bytes, plan: list[Site], device: str | dict[Site, str]
                ) -> tuple[dict[Site, FeatureRecorders], dict[str, Any]]:
    """Recorders for ``plan`` from bytes written by ``save_states``, and the extra entries;
    ``device``: one for all sites, or each site's."""
    recorders = {}
    with np.load(io.BytesIO(data)) as npz:  # one site's arrays in memory at a time
        for site in plan:
            where = device[site] if isinstance(device, dict) else device
            prefix = f"{site.key}/"
            state = {k[len(prefix):]: npz[k] for k in npz.files if k.startswith(prefix)}
            recorders[site] = FeatureRecorders.from_state(state, backend=default_backend(where), device=where)
        extra = {k: from_json_array(npz[k]) for k in npz.files if "/" not in k}
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
