"""What a Dask job's manifest says about how it ran (``manifest.json`` → ``dask``).

- ``shards``: per shard its contexts (``first_ctx`` .. ``last_ctx``), tokens, worker, attempts,
  the checkpoint it resumed from, times, and ``tokens_tokenized``: what its own task tokenized
  (0: its contexts come from the token store);
- ``pieces``: per tokenize piece its corpus and records, worker, attempts, ``tokens_tokenized``
  and times;
- ``tokens_tokenized``: in all, the stream's own tokens, and per worker (pieces and shards);
- ``merges``: per pairwise merge (of one site's state) its site, worker and seconds; ``model_loads``: per worker present at
  the start, the seconds its first task took to load the model;
- ``phases_s`` and ``phase_shares``: the job's wall time, by phase, on this process's clock:
  ``cluster`` (start or join it, and close it), ``open`` (this process loads its model; the
  workers load theirs meanwhile), ``tokenize`` (the workers' model loads that outlast this
  process's included), ``stream`` (until the last shard is done), ``merge`` (the merges left
  after it), ``finalize``; ``task_seconds``: the work summed over the tasks.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from indexer.config import IndexConfig
from indexer.run.engine import Run
from indexer.scaleout.layout import Layout

PHASES = ("cluster", "open", "tokenize", "stream", "merge", "finalize")


class Phases:
    """Wall seconds per phase: each ``lap`` closes the phase that ran since the previous one."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.seconds = dict.fromkeys(PHASES, 0.0)

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] += now - self.last
        self.last = now


class ClusterRun(Run):
    """The client's run of a Dask job: its manifest adds the finalize phase to the job's figures."""

    phases: Phases | None = None

    def manifest(self, finalize_seconds: float) -> dict[str, Any]:
        manifest = super().manifest(finalize_seconds)
        if self.phases is not None and "dask" in manifest:
            seconds = {**self.phases.seconds, "finalize": finalize_seconds}
            total = sum(seconds.values())
            manifest["dask"]["phases_s"] = {k: round(v, 3) for k, v in seconds.items()}
            manifest["dask"]["phase_shares"] = {k: round(v / total, 4) if total else 0.0 for k, v in seconds.items()}
            manifest["dask"]["stream_wall_seconds"] = round(seconds["stream"], 3)
        return manifest


def dask_notes(cfg: IndexConfig, scheduler: str, started: list[dict[str, Any]], ended: list[dict[str, Any]],
               shards: list[dict[str, Any]], pieces: list[dict[str, Any]], merges: list[dict[str, Any]],
               loads: list[dict[str, Any]], layout: Layout) -> dict[str, Any]:
    """The ``dask`` entry of the manifest (``phases_s`` and ``phase_shares`` are added at its writing)."""
    at_start, at_end = {w["address"] for w in started}, {w["address"] for w in ended}
    workers = {w["address"]: {**w, "joined_late": w["address"] not in at_start, "left": w["address"] not in at_end}
               for w in started + ended}
    tokenized: Counter = Counter()
    for task in pieces + shards:
        tokenized[task["address"]] += task["tokens_tokenized"]
        workers.setdefault(task["address"], {  # joined and left between the two looks at the cluster
            "address": task["address"], "host": task["host"], "name": task["name"], "joined_late": True,
            "left": True})
    stream = int(layout.text_tokens().sum())
    return {
        "cluster": cfg.dask, "scheduler": scheduler, "n_workers": len(started),
        "workers": sorted(workers.values(), key=lambda w: w["address"]),
        "devices": sorted({f"{s['device']} ({s['device_name']})" for s in shards}),
        "n_shards": len(shards), "n_pieces": len(pieces),
        "redone_batches": sum(s["redone_batches"] for s in shards),
        "tokens_tokenized": {"total": sum(tokenized.values()), "stream": stream, "per_worker": dict(tokenized)},
        "task_seconds": {
            "tokenize": round(sum(p["tokenize_seconds"] for p in pieces), 3),
            "open": round(sum(t["open_seconds"] for t in loads + pieces + shards), 3),
            "stream": round(sum(s["stream_seconds"] for s in shards), 3),
            "merge": round(sum(m["seconds"] for m in merges), 3),
        },
        "shards": shards,
        "pieces": sorted(pieces, key=lambda p: (p["corpus"], p["start"])),
        "merges": merges,
        "model_loads": loads,
    }
