"""Throughput of `neuroscope index --dask local:N` against one process, side by side (JSON).

    PYTHONPATH=. .venv/bin/python scripts/bench_dask.py [--model toy-1l] [--tokens 400000] [--workers 2] [--shards N]

Indexes the same corpus twice in one run (one process, then N local Dask workers) and prints
both throughputs and their ratio:
- ``job``: tokens / wall seconds of the whole command (model load, cluster start, streaming,
  merge, finalize, manifest);
- ``stream``: tokens / seconds of the streaming pass (one process: its stream; Dask: the
  index phase's wall time, from the first shard handed out to the last one done).
The Dask run's own figures come from its manifest: the shards, the wall time of each phase
(cluster, open, tokenize, stream, merge, finalize) and the tokens each worker tokenized.
Run it on an idle machine: the figures are only ratios between the two runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from indexer.config import IndexConfig
from indexer.scaleout.job import index_on_dask
from indexer.run.engine import index
from indexer.store.manifest import read_manifest


def bench(cfg: IndexConfig, workers: int, folder: Path, shards: int | None = None) -> dict:
    single = replace(cfg, out=str(folder / "single"))
    started = time.perf_counter()
    index(single, progress=False)
    single_s = time.perf_counter() - started
    one = read_manifest(single.out)

    dask = replace(cfg, out=str(folder / "dask"), dask=f"local:{workers}", dask_shards=shards)
    started = time.perf_counter()
    index_on_dask(dask, progress=False)
    dask_s = time.perf_counter() - started
    many = read_manifest(dask.out)

    tokens = one["counts"]["tokens"]
    assert many["counts"]["tokens"] == tokens
    job = many["dask"]
    shards = job["shards"]
    figures = {
        "single": {"job_s": round(single_s, 3), "job_tokens_per_s": round(tokens / single_s, 1),
                   "stream_tokens_per_s": round(tokens / one["timing"]["stream_seconds"], 1)},
        f"dask_local_{workers}": {
            "job_s": round(dask_s, 3), "job_tokens_per_s": round(tokens / dask_s, 1),
            "stream_tokens_per_s": round(tokens / job["stream_wall_seconds"], 1),
            "n_shards": job["n_shards"], "n_pieces": job["n_pieces"],
            "phases_s": job["phases_s"], "phase_shares": job["phase_shares"], "task_seconds": job["task_seconds"],
            "tokens_tokenized_per_worker": sorted(job["tokens_tokenized"]["per_worker"].values()),
            "shard_stream_s": [s["stream_seconds"] for s in shards],
            "model_load_s": [w["open_seconds"] for w in job["model_loads"]],
        },
    }
    d = figures[f"dask_local_{workers}"]
    figures["ratio"] = {
        "job": round(d["job_tokens_per_s"] / figures["single"]["job_tokens_per_s"], 3),
        "stream": round(d["stream_tokens_per_s"] / figures["single"]["stream_tokens_per_s"], 3),
    }
    return {"tokens": tokens, "workers": workers, "cpus": os.cpu_count(), "config": cfg.to_argv(), **figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy-1l")
    parser.add_argument("--corpus", action="append", default=[])
    parser.add_argument("--tokens", type=int, default=400_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=None, help="--dask-shards (default: 4 per worker)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ctx-len", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    cfg = IndexConfig(model=args.model, corpus=args.corpus or ["code", "prose"], out="", tokens=args.tokens,
                      batch_size=args.batch_size, ctx_len=args.ctx_len, device=args.device)
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as folder:
        print(json.dumps(bench(cfg, args.workers, Path(folder), args.shards), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
