"""The worker side of the index phase: one shard into its own folder, from its checkpoint if it
has one.

Shard ``j`` of ``n`` indexes a contiguous range of the stream's contexts (``layout.py``), read
from the token store (``token_store.PieceStream``): it tokenizes nothing. It runs the ordinary
``Run`` into ``OUT/.shards/shard-j-of-n`` (so it checkpoints every ``--checkpoint-every``
batches, atomically, and keeps its contexts' store) and returns the path of its final recorder
state (the last checkpoint, hard-linked as ``state.npz``). When a worker dies mid-shard, Dask
runs the task again elsewhere and it continues from the shard's last checkpoint.

While a shard streams, a thread reports its progress twice a second: as a Dask event (topic
of the job) for the client's progress bar, and as ``progress.json`` in the shard folder (what
the next attempt reads to say how much work a lost attempt did past its checkpoint).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from indexer.config import IndexConfig
from indexer.errors import NeuroscopeError
from indexer.run.checkpoint import FINAL_STATE, checkpoint_as_state, read_checkpoint, read_extra, state_arrays
from indexer.run.checkpoint import write_state_file
from indexer.run.engine import Run
from indexer.run.resume import RESUME_FREE
from indexer.scaleout.token_store import PieceStream, ShardSlice
from indexer.scaleout.worker import dask_worker, device_name, identity, opened_run, read_json, record_attempt, returned
from indexer.store.writer import atomic_write_bytes

REPORT_EVERY_S = 0.5
PROGRESS_FILE = "progress.json"
ATTEMPTS_FILE = "attempts.json"


def shard_dir(shards_root: str | Path, i: int, n: int) -> Path:
    return Path(shards_root) / f"shard-{i}-of-{n}"


def shard_config(cfg: IndexConfig, i: int, n: int, folder: Path) -> IndexConfig:
    """The config of shard ``i`` of ``n``: its own folder; ``shard`` names it in its checkpoints."""
    return replace(cfg, shard=(i, n), out=str(folder), dask=None, dask_shards=None, resume=False, overwrite=False)


def index_shard(cfg_dict: dict[str, Any], shards_root: str, i: int, n: int, part: ShardSlice, topic: str,
                workers_per_host: dict[str, int]) -> dict[str, Any]:
    """Index shard ``i`` of ``n``, the contexts ``part`` (a Dask task). Returns ``{"state": path,
    "shards": [info]}``, or ``{"error": message}`` for a domain error (bad model, options),
    which no retry can fix."""
    try:
        return _index_shard(cfg_dict, Path(shards_root), i, n, part, topic, workers_per_host)
    except NeuroscopeError as e:
        return returned(e)


def _index_shard(cfg_dict: dict[str, Any], root: Path, i: int, n: int, part: ShardSlice, topic: str,
                 workers_per_host: dict[str, int]) -> dict[str, Any]:
    started = time.perf_counter()
    folder = shard_dir(root, i, n)
    folder.mkdir(parents=True, exist_ok=True)
    job_cfg = IndexConfig.from_dict(cfg_dict)
    cfg = shard_config(job_cfg, i, n, folder)
    cfg.validate()
    worker = identity()
    attempts = record_attempt(folder / ATTEMPTS_FILE, worker)
    lost = read_json(folder / PROGRESS_FILE)  # what the previous attempt reported last, if any
    base, open_seconds = opened_run(job_cfg, workers_per_host)
    run = Run(cfg, folder, base.model, base.plan, base.ctx_len, base.device, PieceStream(base.contexts.specs, root, part))
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
    if not (run.checkpoint_current and checkpoint_as_state(folder)):
        write_state_file(folder / FINAL_STATE, state_arrays(run.recorders))
    redone = max(0, lost.get("batches", 0) - resumed_from["batches"]) if lost else 0
    info = {
        "shard": i, "of": n, "first_ctx": part.first, "last_ctx": part.first + part.n_contexts - 1, **worker,
        "device": run.device, "device_name": device_name(run.device),
        "attempts": len(attempts), "attempt_workers": [a["address"] for a in attempts],
        "resumed_from_batch": resumed_from["batches"], "resumed_from_tokens": resumed_from["tokens"],
        "redone_batches": redone, "batches": run.batches_done, "tokens": run.tokens_done, "contexts": run.position,
        "tokens_tokenized": 0,  # read from the token store: the tokenize pieces tokenized them (dask.pieces)
        "corpus_tokens": dict(run.corpus_tokens),
        "stream_seconds": round(run.seconds, 3), "task_seconds": round(time.perf_counter() - started, 3),
        "open_seconds": round(open_seconds, 3), "start_seconds": round(ready - opened, 3),
        "finished": time.time(),
    }
    return {"state": str(folder / FINAL_STATE), "shards": [info]}


def _same_shard(saved: dict[str, Any], cfg: IndexConfig) -> bool:
    """Whether a checkpoint found in a shard folder belongs to this very shard of this job."""
    ignore = RESUME_FREE | {"out"}
    now = cfg.to_dict()
    return {k: v for k, v in saved.items() if k not in ignore} == {k: v for k, v in now.items() if k not in ignore}


class _Reporter:
    """Reports a shard's progress every ``REPORT_EVERY_S``: a Dask event and ``progress.json``."""

    def __init__(self, run: Run, folder: Path, topic: str, shard: int, attempt: int, worker: dict[str, Any]):
        self.run, self.folder, self.topic, self.shard, self.attempt = run, folder, topic, shard, attempt
        self.worker = worker
        self.dask_worker = dask_worker()  # looked up here, in the task's thread
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
