"""The torch backend on a CUDA device: bit for bit the numba backend's results, merged and
resumed alike, and a whole index on the GPU. These need a GPU and are skipped without one
(CI has none; scripts/gpu_check.sh runs them: README, Performance, "On a GPU")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.brute_recorders import assert_same, edges_for, make_batches, makers, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_recorders_equal_numba_bit_for_bit():
    batches = make_batches(n_batches=6)
    batches = [(a.clone(), l, c) for a, l, c in batches]
    batches[1][0][0, 3, 5] = float("nan")  # a token the feature did not see
    edges = edges_for(batches)
    on_gpu = [(a.cuda(), l.cuda(), c.cuda()) for a, l, c in batches]
    for cpu_make, gpu_make in zip(makers("numba", edges), makers("torch", edges, "cuda")):
        cpu, gpu = run(cpu_make, batches), run(gpu_make, on_gpu)
        assert_same(cpu, gpu)


def test_cuda_merge_and_resume_equal_the_single_run(tmp_path):
    batches = [(a.cuda(), l.cuda(), c.cuda()) for a, l, c in make_batches(n_batches=6)]
    for i, make in enumerate(makers("torch", edges_for(batches), "cuda")):
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
