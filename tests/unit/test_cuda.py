"""The torch backend on a CUDA device: bit for bit the numba backend's results, merged and
resumed alike, and a whole index on the GPU. These need a GPU and are skipped without one
(CI has none; the device machine runs them: see the README's GPU section)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexer.recorders import FeatureRecorders, QuantileSampler, Stats, TopK

from helpers.brute_recorders import AFTER, BEFORE, K, PER_BIN, SALT, assert_same, edges_for, make_batches, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _makers(backend: str, device: str, edges):
    return [lambda: TopK(24, K, backend, device, before=BEFORE, after=AFTER),
            lambda: QuantileSampler(24, edges, PER_BIN, SALT, backend, device),
            lambda: Stats(24, backend, device),
            lambda: FeatureRecorders.create(24, edges, K, PER_BIN, SALT, backend, device, window=(BEFORE, AFTER))]


def test_cuda_recorders_equal_numba_bit_for_bit():
    batches = make_batches(n_batches=6)
    batches = [(a.clone(), l, c) for a, l, c in batches]
    batches[1][0][0, 3, 5] = float("nan")  # a token the feature did not see
    edges = edges_for(batches)
    on_gpu = [(a.cuda(), l.cuda(), c.cuda()) for a, l, c in batches]
    for cpu_make, gpu_make in zip(_makers("numba", "cpu", edges), _makers("torch", "cuda", edges)):
        cpu, gpu = run(cpu_make, batches), run(gpu_make, on_gpu)
        assert_same(cpu, gpu)


def test_cuda_merge_and_resume_equal_the_single_run(tmp_path):
    batches = [(a.cuda(), l.cuda(), c.cuda()) for a, l, c in make_batches(n_batches=6)]
    for i, make in enumerate(_makers("torch", "cuda", edges_for(batches))):
        whole = run(make, batches)
        a, b = run(make, batches[:2]), run(make, batches[2:])
        a.merge(b)
        assert_same(a, whole)
        np.savez(tmp_path / f"{i}.npz", **run(make, batches[:3]).state())
        with np.load(tmp_path / f"{i}.npz", allow_pickle=False) as saved:
            resumed = type(whole).from_state(dict(saved), backend="torch", device="cuda")
        for batch in batches[3:]:
            resumed.update(*batch)
        assert_same(resumed, whole)
