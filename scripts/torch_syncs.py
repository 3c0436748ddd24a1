"""The host syncs of the torch recorders, counted on any machine: every op of one batch's
update that would make the host wait for a CUDA device (``nonzero``, boolean indexing and
boolean assignment, which call it, ``.item()`` and ``bool()`` of a tensor, ``unique``,
``masked_select``), by recorder file and line (JSON).

    .venv/bin/python scripts/torch_syncs.py [--features 512] [--batch 2] [--tokens 64] [--batches 2]
    .venv/bin/python scripts/torch_syncs.py --model toy-1l [--corpus code]

With ``--model``: a whole index of that model on the torch recorders
(NEUROSCOPE_RECORDER_BACKEND=torch), counting inside each streamed batch: the forward pass,
its hooks, the head metrics and the recorders (the last batch's figures; finalize not counted).

The ops are caught by a TorchDispatchMode, so the count is the same on the CPU as on a GPU,
except in ``recorders/common.py`` (the batch checks, the token count), which reads host
tensors only and is left out. README, Performance, "On a GPU", says what the figures mean.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]
from helpers.syncs import SyncCounter, counted_passes  # noqa: E402

from indexer.recorders.bundle import FeatureRecorders  # noqa: E402

def index_batches(model: str, corpus: str) -> SyncCounter:
    """The counter of the last streamed batch of a small index of ``model`` on ``corpus``."""
    import os
    import tempfile

    os.environ["NEUROSCOPE_RECORDER_BACKEND"] = "torch"
    from indexer.config import IndexConfig
    from indexer.run.engine import index

    with tempfile.TemporaryDirectory() as out, counted_passes(stream_only=True) as counters:
        cfg = IndexConfig(model=model, corpus=[corpus], out=f"{out}/idx", tokens=4096, ctx_len=None, batch_size=8)
        index(cfg, progress=False)
    return counters[-1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", help="count a whole index's streamed batches (e.g. toy-1l)")
    p.add_argument("--corpus", default="code")
    p.add_argument("--features", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--batches", type=int, default=2, help="the last batch is counted")
    args = p.parse_args()
    if args.model:
        counter = index_batches(args.model, args.corpus)
    else:
        torch.manual_seed(0)
        rec = FeatureRecorders.create(args.features, backend="torch", window=(8, 4), max_len=args.tokens)
        for i in range(args.batches):
            acts = torch.randn(args.batch, args.tokens, args.features)
            lengths, ctx_ids = torch.full((args.batch,), args.tokens), torch.arange(args.batch) + args.batch * i
            counter = SyncCounter()
            with counter:
                rec.update(acts, lengths, ctx_ids)
    by_file: collections.Counter = collections.Counter()
    for where, n in counter.by_line.items():
        by_file[where.split(":")[0]] += n
    print(json.dumps({"syncs_per_batch": sum(by_file.values()), "by_file": dict(by_file.most_common()),
                      "by_line": dict(counter.by_line.most_common())}, indent=1))


if __name__ == "__main__":
    main()
