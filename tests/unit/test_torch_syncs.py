"""The torch recorders never make the host wait for the device inside the batch loop: no
``nonzero``, boolean indexing, ``.item()`` or ``unique`` in a batch's update, counted by
the ops dispatched (helpers/syncs.py), which are the same on the CPU as on a GPU. Their
results are checked against the numba backend in test_recorders.py; a whole index's batches
(forward, hooks, head metrics) in integration/test_runs.py."""

from __future__ import annotations

import torch

from indexer.recorders import FeatureRecorders

from helpers.syncs import SyncCounter


def test_the_counter_catches_the_ops_that_sync():
    x = torch.arange(6.0)
    counter = SyncCounter()
    with counter:
        x[x > 2].sum()
        (x > 2).nonzero()
        (x > 2).nonzero(as_tuple=True)
        float(x.max())
        torch.bincount(x.long())
        x.repeat_interleave(x.long())
        x.repeat_interleave(2)  # a count known on the host: no wait
    assert sum(counter.by_line.values()) == 6, counter.by_line


def test_a_batch_of_the_torch_recorders_never_syncs():
    """Dense and sparse (SAE) sites, NaN values, ragged contexts, several batches (sweeps of
    the window pool in batches 1, 2, 4 and 8, captures, evictions): not one syncing op."""
    generator = torch.Generator().manual_seed(0)
    for skip_zeros in (False, True):
        rec = FeatureRecorders.create(48, k=4, per_bin=2, salt=3, backend="torch", window=(3, 2), max_len=40)
        for i in range(9):
            acts = torch.randn(4, 40, 48, generator=generator) ** 3
            if skip_zeros:
                acts = acts.clamp(min=0)
            acts[0, 5, 7] = float("nan")
            lengths = torch.randint(1, 41, (4,), generator=generator)
            counter = SyncCounter()
            with counter:
                rec.update(acts, lengths, torch.arange(4) + 4 * i, skip_zeros=skip_zeros)
            assert not counter.by_line, (skip_zeros, i, counter.by_line)
        assert int(rec.windows.ctx.ge(0).sum()) > 0  # the pool did capture
