"""Where a GPU's time goes in the stream: ``torch.profiler`` over one streaming pass of a
GPT-2-small-shaped model (random weights), the busiest operators by CUDA and by CPU time.

    python scripts/gpu_profile.py --tokens 32768
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--sites", default="all")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from indexer.config import IndexConfig
    from indexer.run.bench import _random_gpt2_small
    from indexer.run.engine import Run

    with tempfile.TemporaryDirectory() as tmp:
        spec = _random_gpt2_small(Path(tmp))
        cfg = IndexConfig.parse(dict(model=spec, corpus=["code", "prose"], out="", tokens=args.tokens, dtype=args.dtype,
                                     sites=args.sites, checkpoint_every=10**9, device=args.device))
        (Path(tmp) / "idx").mkdir()
        run = Run.open(cfg, Path(tmp) / "idx")
        run.start()
        run.stream(progress=False)  # warm: kernels compiled, allocator grown
        run.reset()
        gpu = args.device.startswith("cuda")
        sync = torch.cuda.synchronize if gpu else (lambda: None)
        sync()
        with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * gpu) as prof:
            started = time.perf_counter()
            run.stream(progress=False)
            sync()
        wall = time.perf_counter() - started
        print(f"stream {args.tokens} tokens ({args.sites}, {args.dtype}): {wall:.2f} s, {args.tokens / wall:.0f} tokens/s")
        table = prof.key_averages()
        if gpu:
            print(table.table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
        print(table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
