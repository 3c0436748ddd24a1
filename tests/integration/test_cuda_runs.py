"""Whole indexes on a CUDA device: shards merged on the GPU equal the single GPU run bit for
bit, and the GPU's index agrees with the CPU's up to the forward pass's rounding. Skipped
without a GPU (CI has none; scripts/gpu_check.sh runs them: README, Performance, "On a GPU")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexer.api import Index
from indexer.run.engine import index
from indexer.run.merge import merge

from helpers.configs import base_config
from helpers.indexes import assert_same_index

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def gpu_run(tiny_model_dir, tmp_path_factory) -> str:
    cfg = base_config(str(tiny_model_dir), str(tmp_path_factory.mktemp("gpu") / "idx"), device="cuda")
    index(cfg, progress=False)
    return cfg.out


def test_gpu_shards_merge_into_the_gpu_single_run(tiny_model_dir, gpu_run, tmp_path):
    shards = []
    for i in range(2):
        cfg = base_config(str(tiny_model_dir), str(tmp_path / f"shard{i}"), shard=(i, 2), device="cuda")
        index(cfg, progress=False)
        shards.append(cfg.out)
    merge(shards, str(tmp_path / "merged"), progress=False)
    assert_same_index(gpu_run, str(tmp_path / "merged"))


def test_gpu_index_agrees_with_the_cpu_index(tiny_model_dir, gpu_run, tmp_path):
    cpu = base_config(str(tiny_model_dir), str(tmp_path / "cpu"), device="cpu")
    index(cpu, progress=False)
    query = ("SELECT layer, neuron, rank, activation FROM examples WHERE site = 'mlp_post' AND kind = 'top' "
             "ORDER BY layer, neuron, rank")
    a, b = Index.open(gpu_run).sql(query), Index.open(cpu.out).sql(query)
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a["activation"], b["activation"], rtol=1e-4, atol=1e-5)
    stats = "SELECT layer, neuron, mean FROM neurons WHERE site = 'mlp_post' ORDER BY layer, neuron"
    np.testing.assert_allclose(Index.open(gpu_run).sql(stats)["mean"], Index.open(cpu.out).sql(stats)["mean"],
                               rtol=1e-4, atol=1e-6)


def test_the_gpu_run_grows_its_window_pool_into_the_gpus_free_memory(gpu_run):
    """A tiny model leaves the GPU nearly free: auto takes the largest pool, 6 entries per sample."""
    import json
    from pathlib import Path

    from indexer.recorders.sample_windows import pool_size

    manifest = json.loads((Path(gpu_run) / "manifest.json").read_text())
    cfg = base_config("x", "y")
    assert manifest["timing"]["window_pool_entries"] == pool_size(len(cfg.quantiles), cfg.per_bin, 6.0)
