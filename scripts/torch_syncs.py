"""The host syncs of the torch recorders, counted on any machine: every op of one batch's
update that would make the host wait for a CUDA device (``nonzero``, boolean indexing and
boolean assignment, which call it, ``.item()`` and ``bool()`` of a tensor, ``unique``,
``masked_select``), by recorder file and line (JSON).

    .venv/bin/python scripts/torch_syncs.py [--features 512] [--batch 2] [--tokens 64] [--batches 2]

The ops are caught by a TorchDispatchMode, so the count is the same on the CPU as on a GPU,
except the batch checks (``recorders/common.check_batch``), which run only on host tensors
and are left out. README, Performance, "On a GPU", says what the figures mean.
"""

from __future__ import annotations

import argparse
import collections
import json
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from indexer.recorders.bundle import FeatureRecorders

SYNCING = {"nonzero", "_local_scalar_dense", "unique", "_unique2", "unique_dim", "unique_consecutive",
           "masked_select", "is_nonzero", "equal"}
INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}
HOST_ONLY = ("recorders/common.py",)  # the batch checks: host tensors only


class SyncCounter(TorchDispatchMode):
    """Counts the syncing ops dispatched while active, by (file, line) of the innermost
    indexer frame."""

    def __init__(self) -> None:
        super().__init__()
        self.by_line: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[1]
        syncs = name in SYNCING or (name in INDEXING and any(
            t is not None and t.dtype in (torch.bool, torch.uint8) for t in args[1]))
        if syncs:
            frames = [f for f in traceback.extract_stack() if "/indexer/" in f.filename]
            if frames:
                where = f"{frames[-1].filename.split('/indexer/')[1]}:{frames[-1].lineno}"
                if not where.startswith(HOST_ONLY):
                    self.by_line[where] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--features", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--batches", type=int, default=2, help="the last batch is counted")
    args = p.parse_args()
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
