"""The worker side: index one shard into its own folder, from its checkpoint if it has one.

A task indexes the contexts with ``ctx_id % n == i`` into ``OUT/.shards/shard-i-of-n`` with the
ordinary ``Run`` (so it checkpoints every ``--checkpoint-every`` batches, atomically) and
returns its recorder state as the bytes of ``save_states``. When a worker dies mid-shard, Dask
runs the task again elsewhere and it continues from the shard's last checkpoint. The model is
loaded once per worker process and reused by every shard that process runs.

While a shard streams, a thread reports its progress twice a second: as a Dask event (topic
of the job) for the client's progress bar, and as ``progress.json`` in the shard folder (what
the next attempt reads to say how much work a lost attempt did past its checkpoint).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from indexer.config import IndexConfig
from indexer.dist.cluster import host_of
from indexer.errors import NeuroscopeError
from indexer.forward.sites import Site
from indexer.run.checkpoint import load_states, read_checkpoint, read_extra, save_states
from indexer.run.engine import Run
from indexer.run.resume import RESUME_FREE
from indexer.store.writer import atomic_write_bytes

REPORT_EVERY_S = 0.5
PROGRESS_FILE = "progress.json"
ATTEMPTS_FILE = "attempts.json"

# Runs opened in this worker process, by what their model and stream depend on: each shard
# after the first reuses the model, plan and stream of the one opened here.
_OPENED: dict[str, Run] = {}
_LOCK = threading.Lock()


def shard_dir(shards_root: str | Path, i: int, n: int) -> Path:
    return Path(shards_root) / f"shard-{i}-of-{n}"


def shard_config(cfg: IndexConfig, i: int, n: int, folder: Path) -> IndexConfig:
    """The config of shard ``i`` of ``n``: an ordinary sharded run into its own folder."""
    return replace(cfg, shard=(i, n), out=str(folder), dask=None, resume=False, overwrite=False)


def index_shard(cfg_dict: dict[str, Any], shards_root: str, i: int, n: int, topic: str,
                workers_per_host: dict[str, int]) -> dict[str, Any]:
    """Index shard ``i`` of ``n`` (a Dask task). Returns ``{"states", "plan", "shards": [info]}``,
    or ``{"error": message}`` for a domain error (bad model, corpus, options), which no retry
    can fix."""
    try:
        return _index_shard(cfg_dict, shards_root, i, n, topic, workers_per_host)
    except NeuroscopeError as e:
        return {"error": str(e), "kind": type(e).__name__}


def _index_shard(cfg_dict: dict[str, Any], shards_root: str, i: int, n: int, topic: str,
                 workers_per_host: dict[str, int]) -> dict[str, Any]:
    started = time.perf_counter()
    folder = shard_dir(shards_root, i, n)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = shard_config(IndexConfig.from_dict(cfg_dict), i, n, folder)
    cfg.validate()
    worker = _worker_identity()
    attempts = _record_attempt(folder, worker)
    lost = _read_json(folder / PROGRESS_FILE)  # what the previous attempt reported last, if any
    run = _open(cfg, folder, worker, workers_per_host)
    opened = time.perf_counter()
    checkpoint = read_checkpoint(folder)  # the newest good one (checksummed), or None
    resumed_from = {"batches": 0, "tokens": 0}
    if checkpoint is not None and _same_shard(read_extra(checkpoint, "config"), cfg):
        run.restore(checkpoint)
        resumed_from = {"batches": run.batches_done, "tokens": run.tokens_done}
    else:
        run.start()
    ready = time.perf_counter()
    reporter = _Reporter(run, folder, topic, i, len(attempts), worker)
    reporter.start()
    try:
        run.stream(progress=False)
    finally:
        reporter.stop()
    redone = max(0, lost.get("batches", 0) - resumed_from["batches"]) if lost else 0
    info = {
        "shard": i, "of": n, **worker, "device": run.device, "device_name": _device_name(run.device),
        "attempts": len(attempts), "attempt_workers": [a["address"] for a in attempts],
        "resumed_from_batch": resumed_from["batches"], "resumed_from_tokens": resumed_from["tokens"],
        "redone_batches": redone,
        "batches": run.batches_done, "tokens": run.tokens_done, "contexts": run.position,
        "corpus_tokens": dict(run.corpus_tokens),
        "stream_seconds": round(run.seconds, 3), "task_seconds": round(time.perf_counter() - started, 3),
        "open_seconds": round(opened - started, 3), "start_seconds": round(ready - opened, 3),
    }
    return {"states": save_states(run.recorders), "plan": list(run.plan), "shards": [info]}


def merge_results(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two shard results (or merged results) as one: recorder states merged exactly (a Dask task)."""
    for part in (a, b):
        if "error" in part:
            return part
    plan: list[Site] = a["plan"]
    left, _ = load_states(a["states"], plan, "cpu")
    right, _ = load_states(b["states"], plan, "cpu")
    for site, rec in left.items():
        rec.merge(right[site])
    return {"states": save_states(left), "plan": plan, "shards": a["shards"] + b["shards"]}


def _open(cfg: IndexConfig, folder: Path, worker: dict[str, Any], workers_per_host: dict[str, int]) -> Run:
    """A Run for this shard; the model is loaded once per worker process."""
    key = json.dumps({k: v for k, v in cfg.to_dict().items() if k not in ("shard", "out", "checkpoint_every", "checkpoint_minutes")},
                     sort_keys=True)
    with _LOCK:
        base = _OPENED.get(key)
        if base is None:
            run = Run.open(cfg, folder)
            _set_threads(run.device, worker["host"], workers_per_host)
            _OPENED.clear()  # one model per process
            _OPENED[key] = run
            return run
    stream = replace(base.contexts, shard=cfg.shard, counters={})
    return Run(cfg, folder, base.model, base.plan, base.ctx_len, base.device, stream)


def _set_threads(device: str, host: str, workers_per_host: dict[str, int]) -> None:
    """On CPU, share the host's cores among its workers (Dask starts workers with one thread)."""
    if device != "cpu":
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // max(1, workers_per_host.get(host, 1))))


def _same_shard(saved: dict[str, Any], cfg: IndexConfig) -> bool:
    """Whether a checkpoint found in a shard folder belongs to this very shard of this job."""
    ignore = RESUME_FREE | {"out"}
    now = cfg.to_dict()
    return {k: v for k, v in saved.items() if k not in ignore} == {k: v for k, v in now.items() if k not in ignore}


def _dask_worker() -> Any:
    """The Dask worker running the current task, or None outside one."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _worker_identity() -> dict[str, Any]:
    worker = _dask_worker()
    address = worker.address if worker is not None else "local"
    return {"address": address, "host": host_of(address), "hostname": socket.gethostname(), "pid": os.getpid()}


def _device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def _record_attempt(folder: Path, worker: dict[str, Any]) -> list[dict[str, Any]]:
    path = folder / ATTEMPTS_FILE
    attempts = _read_json(path).get("attempts", [])
    attempts.append({**worker, "started": time.time()})
    atomic_write_bytes(path, json.dumps({"attempts": attempts}).encode())
    return attempts


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class _Reporter:
    """Reports a shard's progress every ``REPORT_EVERY_S``: a Dask event and ``progress.json``."""

    def __init__(self, run: Run, folder: Path, topic: str, shard: int, attempt: int, worker: dict[str, Any]):
        self.run, self.folder, self.topic, self.shard, self.attempt = run, folder, topic, shard, attempt
        self.worker = worker
        self.dask_worker = _dask_worker()  # looked up here, in the task's thread
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"neuroscope-shard-{shard}-progress", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self._report()

    def _loop(self) -> None:
        while not self.done.wait(REPORT_EVERY_S):
            self._report()

    def _report(self) -> None:
        msg = {"shard": self.shard, "attempt": self.attempt, "tokens": int(self.run.tokens_done),
               "batches": int(self.run.batches_done), "pid": self.worker["pid"], "address": self.worker["address"]}
        atomic_write_bytes(self.folder / PROGRESS_FILE, json.dumps(msg).encode())
        if self.dask_worker is not None:  # else called directly, not on a worker: the file is the report
            self.dask_worker.log_event(self.topic, msg)
