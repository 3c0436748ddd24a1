"""The scaling model of `neuroscope index --dask` (README, "Scaling model"): the expected wall
time of a run on 1, 8 and 64 GPUs, phase by phase, from per-phase costs and the model's shape.

    .venv/bin/python scripts/scaling_model.py [--tokens 256000000] [--manifest DIR/manifest.json]

Costs per phase, measured (``MEASURED``: on the 2-core CPU this repository is developed on, or
read from a Dask job's manifest with ``--manifest``): tokenizing (tokens per second per core),
a shard's state write and a pairwise merge (seconds per feature of the state), finalize
(seconds per feature). Not measured here, and labelled so (``SHAPES``): each model's streaming
throughput on one GPU and its load time. The phases, as the job runs them (indexer/scaleout):

    cluster + open (load, in parallel) + tokenize (tokens / (W x cores x rate))
    + stream (tokens / (W x GPU rate) + the shards' state writes, S / W each)
    + merge (max of the merge work spread over W workers and the deepest tree's levels)
    + finalize (one process)

A single process (no Dask) tokenizes inline, on one core, while the GPU waits.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass

MIN_SHARD_TOKENS_GPU = 1 << 26  # as indexer.scaleout.job: the default shard count on GPU workers
SHARDS_PER_WORKER = 4

MEASURED = {
    "tokenize_tokens_per_s_per_core": 0.5e6,  # reading + tokenizing + cutting (README: ~2 s per 1M tokens)
    "state_write_s_per_feature": 0.25e-3,  # a shard's final checkpoint, sealed (toy: 0.26 s for 1,024 features)
    "merge_s_per_feature": 0.65e-3,  # one site's pairwise merge: read two states, merge, write one
    "finalize_s_per_feature": 0.67e-3,  # toy-1l at 1M tokens: examples + windows + write, 0.71 s for 1,056
}
CLUSTER_S = 30.0  # assumed: join a scheduler whose workers are up
CORES_PER_GPU = 8  # assumed: CPU cores a GPU worker's tokenizer may use


@dataclass(frozen=True)
class Shape:
    """A model shape: features (and the largest site's), and what is assumed of it on one GPU."""

    name: str
    features: int
    largest_site: int
    gpu_tokens_per_s: float  # ASSUMED: streaming (forward to the last layer + recorders), one GPU
    load_s: float  # ASSUMED: loading the model on a worker


SHAPES = (
    # 12 layers x 3,072 neurons + 576 head metrics; ~0.25 GFLOP of forward per token (~1.5M/s at
    # 40% of an H100's bf16) and ~3 MB of recorder traffic per token (~1M/s): 400k/s together.
    Shape("GPT-2-small shape", 37_440, 3_072, 400e3, 10.0),
    # 32 layers x 14,336 neurons + 4,096 head metrics; ~15 GFLOP per token (~27k/s at 40% MFU)
    # and ~37 MB of recorder traffic per token (~80k/s): 20k/s together.
    Shape("Llama-3.1-8B shape", 462_848, 14_336, 20e3, 60.0),
)


def shards(workers: int, tokens: int) -> int:
    return max(workers, min(SHARDS_PER_WORKER * workers, tokens // MIN_SHARD_TOKENS_GPU))


def dask_job(shape: Shape, workers: int, tokens: int, n_shards: int, cost: dict[str, float]) -> dict[str, float]:
    """Seconds per phase of a Dask job on ``workers`` GPUs with ``n_shards`` shards."""
    f = shape.features
    levels = math.ceil(math.log2(n_shards)) if n_shards > 1 else 0
    return {
        "cluster": CLUSTER_S,
        "open": shape.load_s,
        "tokenize": tokens / (workers * CORES_PER_GPU * cost["tokenize_tokens_per_s_per_core"]),
        "stream": tokens / (workers * shape.gpu_tokens_per_s)
        + math.ceil(n_shards / workers) * f * cost["state_write_s_per_feature"],
        "merge": max((n_shards - 1) * f * cost["merge_s_per_feature"] / workers,
                     levels * shape.largest_site * cost["merge_s_per_feature"]),
        "finalize": f * cost["finalize_s_per_feature"],
    }


def single_process(shape: Shape, tokens: int, cost: dict[str, float]) -> dict[str, float]:
    f = shape.features
    return {
        "open": shape.load_s,
        "tokenize": tokens / cost["tokenize_tokens_per_s_per_core"],  # inline: the GPU waits
        "stream": tokens / shape.gpu_tokens_per_s + f * cost["state_write_s_per_feature"],
        "finalize": f * cost["finalize_s_per_feature"],
    }


def measured_costs(manifest: dict) -> dict[str, float]:
    """The CPU costs of a Dask job, from its manifest (the phases it did not time keep MEASURED's)."""
    job = manifest["dask"]
    sizes = {f"{s['name']}/{s['layer']}": s["n_features"] for s in manifest["sites"]}
    features = sum(sizes.values())
    cost = dict(MEASURED)
    pieces = job.get("pieces", [])
    if sum(p["tokenize_seconds"] for p in pieces):
        cost["tokenize_tokens_per_s_per_core"] = (sum(p["tokens_tokenized"] for p in pieces)
                                                  / sum(p["tokenize_seconds"] for p in pieces))
    if job.get("merges"):
        cost["merge_s_per_feature"] = sum(m["seconds"] for m in job["merges"]) / sum(sizes[m["site"]] for m in job["merges"])
    writes = [s["task_seconds"] - s["stream_seconds"] - s["open_seconds"] - s["start_seconds"] for s in job["shards"]]
    cost["state_write_s_per_feature"] = max(0.0, sum(writes) / len(writes)) / features
    cost["finalize_s_per_feature"] = manifest["timing"]["finalize_seconds"] / features
    return cost


def table(tokens: int, cost: dict[str, float]) -> str:
    rows = ["| model shape | GPUs | shards | wall | tokenize | stream | merge | finalize | fixed (cluster, load) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for shape in SHAPES:
        one = single_process(shape, tokens, cost)
        rows.append(_row(shape.name, "1, one process", "-", one, fixed=one["open"]))
        for workers in (1, 8, 64):
            for n in dict.fromkeys((shards(workers, tokens), SHARDS_PER_WORKER * workers)):
                phases = dask_job(shape, workers, tokens, n, cost)
                rows.append(_row(shape.name, str(workers), str(n), phases, fixed=phases["cluster"] + phases["open"]))
    return "\n".join(rows)


def _row(name: str, gpus: str, n: str, phases: dict[str, float], fixed: float) -> str:
    cells = [_time(phases.get(k, 0.0)) for k in ("tokenize", "stream", "merge", "finalize")]
    return f"| {name} | {gpus} | {n} | **{_time(sum(phases.values()))}** | {' | '.join(cells)} | {_time(fixed)} |"


def _time(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256_000_000)
    parser.add_argument("--manifest", help="a Dask job's manifest.json: its measured CPU costs replace MEASURED")
    args = parser.parse_args(argv)
    cost = dict(MEASURED)
    if args.manifest:
        try:
            with open(args.manifest) as f:
                cost = measured_costs(json.load(f))
        except (OSError, ValueError, KeyError) as e:
            print(f"scaling_model: {args.manifest}: not a Dask job's manifest ({type(e).__name__}: {e})", file=sys.stderr)
            return 1
    print(json.dumps(cost))
    print(table(args.tokens, cost))
    return 0


if __name__ == "__main__":
    sys.exit(main())
