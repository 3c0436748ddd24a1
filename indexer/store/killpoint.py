"""A test hook: kill this process at a named point, to test crash safety deterministically.

Off unless the environment variable ``NEUROSCOPE_TEST_KILL_AT`` is set to ``NAME:N`` (or a
comma list of them): the N-th time (1-based) the program reaches the point called NAME, it
sends itself SIGKILL, exactly as an out-of-memory killer or a pulled plug would. Points:

- ``batch``: after a batch was fed to the recorders, before any checkpoint of it;
- ``store-write``: a batch's token ids are appended to the context store, its index rows
  not yet (indexer.run.context_store);
- ``checkpoint-write``: a checkpoint's temporary file is half written;
- ``checkpoint-rotate``: the old checkpoint became ``checkpoint.prev.npz``, the new one is
  not in place yet;
- ``finalize``: the streaming pass ended, nothing of the index is written yet;
- ``parquet-write``: a Parquet part file's temporary file is written, not yet renamed;
- ``manifest-write``: the manifest's temporary file is half written;
- ``state-write``: ``state.npz`` is half written.

``NEUROSCOPE_TEST_SLOW_AT=NAME:SECONDS`` makes every hit of a point sleep that long, so a test
can stop a run mid-way on a fast machine (e.g. kill a Dask worker while its shard streams).

Lives in the store, the lowest layer that writes files, so every writer can reach it.
"""

from __future__ import annotations

import os
import signal
import threading
import time

ENV = "NEUROSCOPE_TEST_KILL_AT"
SLOW_ENV = "NEUROSCOPE_TEST_SLOW_AT"
_hits: dict[str, int] = {}
_lock = threading.Lock()  # Parquet files are written from several threads


def kill_point(name: str) -> None:
    """SIGKILL this process if ``NEUROSCOPE_TEST_KILL_AT`` names this point and hit count
    (and first sleep if ``NEUROSCOPE_TEST_SLOW_AT`` names it)."""
    slow = os.environ.get(SLOW_ENV)
    if slow:
        for item in slow.split(","):
            point, _, seconds = item.strip().partition(":")
            if point == name:
                time.sleep(float(seconds))
    spec = os.environ.get(ENV)
    if not spec:
        return
    with _lock:
        _hits[name] = hit = _hits.get(name, 0) + 1
    for item in spec.split(","):
        point, _, nth = item.strip().partition(":")
        if point == name and hit == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
