"""What every task on a Dask worker shares: the model, loaded once per worker process (by its
first task); who the worker is; how many times a task was attempted; the CPU threads it may use
and how its memory allocator behaves."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from indexer import errors
from indexer.config import IndexConfig
from indexer.errors import NeuroscopeError
from indexer.run.engine import Run
from indexer.scaleout.cluster import host_of
from indexer.store.writer import atomic_write_bytes

# The Run opened in this worker process, by what its model and stream depend on: every task
# after the first reuses its model, plan and context stream.
_OPENED: dict[str, Run] = {}
_LOCK = threading.Lock()
PER_TASK = ("shard", "out", "checkpoint_every", "checkpoint_minutes")  # config fields a task may change


def opened_run(cfg: IndexConfig, workers_per_host: dict[str, int], host: str | None = None) -> tuple[Run, float]:
    """This process's Run for ``cfg`` (the model loaded once per process), and the seconds
    spent opening it or waiting for it now (0 when it was open already). ``host``: this
    worker's host (looked up in a task's thread if not given)."""
    key = json.dumps({k: v for k, v in cfg.to_dict().items() if k not in PER_TASK}, sort_keys=True)
    host = host or identity()["host"]
    started = time.perf_counter()
    with _LOCK:
        run = _OPENED.get(key)
        if run is None:
            run = Run.open(cfg, Path(cfg.out))
            keep_freed_memory()
            _OPENED.clear()  # one model per process
            _OPENED[key] = run
        set_threads(run.device, host, workers_per_host)  # per task: the thread counts are per thread
        return run, time.perf_counter() - started


def preload(cfg_dict: dict[str, Any], workers_per_host: dict[str, int]) -> dict[str, Any]:
    """Load the model on this worker (a Dask task, each worker's first): who, on which device, in
    how many seconds.

    In the task's own thread, not one of its own: an import running in another thread while
    Dask unpickles data on the worker's event loop can break that transfer."""
    worker = identity()
    run, seconds = opened_run(IndexConfig.from_dict(cfg_dict), workers_per_host, worker["host"])
    return {**worker, "device": run.device, "open_seconds": round(seconds, 3)}


def set_threads(device: str, host: str, workers_per_host: dict[str, int]) -> None:
    """On CPU, share the host's cores among its workers (Dask starts workers with one thread),
    in the calling thread: OpenMP's thread count (torch's) and numba's are per thread, and a
    task may run in another thread than the one that loaded the model. Two workers on two
    cores each running two threads streamed at a third of their share."""
    if device != "cpu":
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // max(1, workers_per_host.get(host, 1)))
    torch.set_num_threads(share)
    import numba  # the recorders' parallel kernels: two workers' threads on one core wait on each other

    numba.set_num_threads(min(share, numba.config.NUMBA_NUM_THREADS))


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> None:
    """Let glibc reuse freed memory instead of returning it to the system at once.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins glibc's
    mmap threshold at 128 KB: every tensor of a forward pass is then a fresh ``mmap`` whose
    pages fault in zeroed, and ``munmap``ed when freed. Measured here, a softmax over
    [8, 8, 256, 256] ran 3.4x slower in a worker than in the main process, and a shard
    streamed at 0.6 of the single run. Large blocks (up to glibc's 32 MB cap) come from the
    heap again, and the heap is trimmed past 256 MB free. Not glibc: nothing to do."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)


def dask_worker() -> Any:
    """The Dask worker running the current task, or None outside one."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def identity() -> dict[str, Any]:
    """The worker running this task: address, host, Dask name, hostname and process id."""
    worker = dask_worker()
    address = worker.address if worker is not None else "local"
    name = str(worker.name) if worker is not None else ""
    return {"address": address, "host": host_of(address), "name": name, "hostname": socket.gethostname(),
            "pid": os.getpid()}


def device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def record_attempt(path: Path, worker: dict[str, Any]) -> list[dict[str, Any]]:
    """Add this attempt of a task to the list kept in ``path``; the list."""
    attempts = read_json(path).get("attempts", [])
    attempts.append({**worker, "started": time.time()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps({"attempts": attempts}).encode())
    return attempts


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def returned(error: NeuroscopeError) -> dict[str, Any]:
    """A domain error (bad model, corpus or options) as a task's result: no retry can fix it."""
    return {"error": str(error), "kind": type(error).__name__}


def checked(result: dict[str, Any]) -> dict[str, Any]:
    """A task's result, or the domain error it returned, raised here (on the client)."""
    if "error" in result:
        raise getattr(errors, result.get("kind", ""), NeuroscopeError)(result["error"])
    return result
