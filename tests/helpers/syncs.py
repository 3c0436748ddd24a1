"""SyncCounter: the ops that would make the host wait for a CUDA device, counted on any
machine (scripts/torch_syncs.py prints them; tests/unit/test_torch_syncs.py asserts none in a
batch of the torch recorders)."""

from __future__ import annotations

import collections
import contextlib
import traceback
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING = {"nonzero", "nonzero_numpy", "argwhere", "_local_scalar_dense", "unique", "_unique2", "unique_dim",
           "unique_consecutive", "masked_select", "is_nonzero", "equal", "bincount"}
INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}
HOST_ONLY = ("recorders/common.py",)  # the batch checks and token count: host tensors only


class SyncCounter(TorchDispatchMode):
    """Counts the syncing ops dispatched while active, by (file, line) of the innermost
    indexer frame."""

    def __init__(self) -> None:
        super().__init__()
        self.by_line: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[1]
        syncs = name in SYNCING or (name in INDEXING and any(
            t is not None and t.dtype in (torch.bool, torch.uint8) for t in args[1])) or (
            name == "repeat_interleave" and isinstance(args[-1] if len(args) < 3 else args[1], torch.Tensor)
            and (kwargs or {}).get("output_size") is None)  # repeats given as a tensor: the output's size is their sum
        if syncs:
            frames = [f for f in traceback.extract_stack() if "/indexer/" in f.filename]
            where = f"{frames[-1].filename.split('/indexer/')[1]}:{frames[-1].lineno}" if frames else "?"
            if not where.startswith(HOST_ONLY):
                self.by_line[where] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counted_passes(stream_only: bool = False) -> Iterator[list[SyncCounter]]:
    """Every model pass (``SiteForward.__call__``: the forward, its hooks and what they feed,
    the recorders included) under a fresh SyncCounter, appended to the list yielded;
    ``stream_only``: only the streaming pass's batches, not finalize's passes."""
    from indexer.forward.runner import SiteForward
    from indexer.run.engine import Run

    counters: list[SyncCounter] = []
    streaming = [not stream_only]
    call, stream = SiteForward.__call__, Run._stream_batches

    def counted(self, *args, **kwargs):
        if not streaming[0]:
            return call(self, *args, **kwargs)
        counters.append(SyncCounter())
        with counters[-1]:
            return call(self, *args, **kwargs)

    def streamed(self, *args, **kwargs):
        streaming[0] = True
        try:
            return stream(self, *args, **kwargs)
        finally:
            streaming[0] = not stream_only

    SiteForward.__call__, Run._stream_batches = counted, streamed
    try:
        yield counters
    finally:
        SiteForward.__call__, Run._stream_batches = call, stream

