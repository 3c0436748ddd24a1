"""Milliseconds per update of each neuron recorder, separately and fused, per backend.

    .venv/bin/python scripts/bench_recorders.py [--shapes 8x256x1024,8x1024x2048] [--reps 10]

Activations are GELU of Gaussians. Each recorder first sees `--warmup` batches (so the
samplers are past their filling phase; the first batch is reported separately), then the
timed batches; each timing is [min wall, median wall, min CPU (all threads)] ms over
`--reps`. numba compilation happens before any timing. `np.max` over the same batch is
printed as a machine-speed reference: the box may be shared. For per-thread cost run with
NUMBA_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import time

import numba
import numpy as np
import torch

from indexer.recorders import FeatureRecorders, QuantileSampler, Stats, TopK, warm_up


def batches(shape, n, seed=0):
    """n distinct batches (acts, lengths, ctx_ids) cycled by the caller."""
    g = torch.Generator().manual_seed(seed)
    b, t, f = shape
    out = []
    for i in range(n):
        acts = torch.nn.functional.gelu(torch.randn(b, t, f, generator=g) * 1.5 - 0.5).contiguous()
        lengths = torch.full((b,), t, dtype=torch.int64)
        lengths[0] = max(1, t // 3)  # some padding, as at the end of a document
        out.append((acts, lengths, torch.arange(i * b, (i + 1) * b, dtype=torch.int64)))
    return out


def timed(fn, reps):
    """[min, median] wall ms and min CPU ms (all threads): CPU time is robust to a busy box."""
    wall, cpu = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return [round(min(wall) * 1e3, 2), round(float(np.median(wall)) * 1e3, 2), round(min(cpu) * 1e3, 2)]


def bench_shape(shape, backend, reps, warmup):
    data = batches(shape, 4)
    n_feat = shape[2]
    edges = (0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)  # requested quantiles
    makers = {
        "topk": lambda: TopK(n_feat, 20, backend),
        "quantiles": lambda: QuantileSampler(n_feat, edges, 5, 0, backend),
        "stats": lambda: Stats(n_feat, backend),
        "fused": lambda: FeatureRecorders.create(n_feat, edges, 20, 5, 0, backend),
    }
    row = {}
    for name, make in makers.items():
        rec = make()
        counter = iter(range(10**9))

        def step():
            i = next(counter)
            acts, lengths, ctx = data[i % len(data)]
            rec.update(acts, lengths, ctx + (i // len(data)) * 10**6)

        row[f"{name}_first_ms"] = timed(step, 1)[0]  # the bins are still filling
        for _ in range(warmup):
            step()
        row[f"{name}_ms"] = timed(step, reps)
    row["sum_of_three_ms"] = round(sum(row[f"{n}_ms"][0] for n in ("topk", "quantiles", "stats")), 2)
    acts = data[0][0].numpy()
    row["np_max_ms"] = timed(lambda: acts.max(), reps)[:2]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="8x256x1024,8x1024x2048")
    ap.add_argument("--backends", default="numba,torch")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    warm_up()  # compile (or load from numba's cache) every kernel outside the timings
    print(json.dumps({"numba_threads": numba.get_num_threads(),
                      "threading_layer": numba.threading_layer(),
                      "torch_threads": torch.get_num_threads()}))
    for spec in args.shapes.split(","):
        shape = tuple(int(x) for x in spec.split("x"))
        for backend in args.backends.split(","):
            reps = args.reps if backend == "numba" or shape[1] * shape[2] < 10**6 else 2
            row = bench_shape(shape, backend, reps, args.warmup if backend == "numba" else 2)
            print(json.dumps({"shape": spec, "backend": backend, **row}))


if __name__ == "__main__":
    main()
