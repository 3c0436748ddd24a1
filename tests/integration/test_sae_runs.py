"""SAE sites through the overnight-run machinery: shards merged, and a run killed mid-stream and
resumed, end with the index of one uninterrupted run (latents included); analyses refuse an
SAE whose weights changed since indexing."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from helpers.configs import base_config
from helpers.indexes import assert_same_index, index_shards_and_merge
from helpers.saes import write_saelens
from indexer.errors import SaeError
from indexer.run.engine import index


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("saes")
    saes = [f"tk={write_saelens(root / 'tk', 'topk', 'blocks.1.hook_mlp_out', 32, 48, k=4)}",
            f"jr={write_saelens(root / 'jr', 'jumprelu', 'blocks.0.mlp.hook_post', 64, 40)}"]
    cfg = base_config(str(tiny_model_dir), str(tmp_path_factory.mktemp("single") / "ix"), sites=("mlp_post",),
                      tokens=1500, sae=saes)
    index(cfg, progress=False)
    return cfg


def test_shards_merge_into_the_single_run(setup, tmp_path):
    assert_same_index(setup.out, index_shards_and_merge(setup, tmp_path))


def test_resume_after_kill_equals_uninterrupted_run(setup, tmp_path):
    cfg = replace(setup, out=str(tmp_path / "killed"), checkpoint_every=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEUROSCOPE_TEST_KILL_AT": "batch:5"}
    argv = [sys.executable, "-m", "indexer.cli", "index", *cfg.to_argv(), "--quiet"]
    killed = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert killed.returncode != 0 and (tmp_path / "killed" / "checkpoint.npz").exists()
    del env["NEUROSCOPE_TEST_KILL_AT"]
    done = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_index(setup.out, cfg.out)


def test_analyses_refuse_an_sae_whose_weights_changed(setup, tmp_path):
    from indexer.analyses.common import IndexContext, Options

    folder = setup.sae[0].split("=", 1)[1]
    copy = tmp_path / "tk"
    copy.mkdir()
    for f in os.listdir(folder):
        (copy / f).write_bytes(open(os.path.join(folder, f), "rb").read())
    other = replace(setup, out=str(tmp_path / "ix"), sae=[f"tk={copy}"])
    index(other, progress=False)
    write_saelens(copy, "topk", "blocks.1.hook_mlp_out", 32, 48, k=4, seed=7)  # new weights, same shapes
    with pytest.raises(SaeError, match="not the SAE the index was made with"):
        IndexContext(other.out, Options(device="cpu", progress=False)).sae_sites


def test_resume_refuses_an_sae_whose_weights_changed(setup, tmp_path):
    """A checkpoint remembers each SAE's weights hash: resuming with other weights at the same
    path is one line and a non-zero exit, and the checkpoint is kept."""
    folder = setup.sae[0].split("=", 1)[1]
    copy = tmp_path / "tk"
    copy.mkdir()
    for f in os.listdir(folder):
        (copy / f).write_bytes(open(os.path.join(folder, f), "rb").read())
    cfg = replace(setup, out=str(tmp_path / "killed"), checkpoint_every=1, sae=[f"tk={copy}"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEUROSCOPE_TEST_KILL_AT": "batch:5"}
    argv = [sys.executable, "-m", "indexer.cli", "index", *cfg.to_argv(), "--quiet"]
    killed = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert killed.returncode != 0 and (tmp_path / "killed" / "checkpoint.npz").exists()
    del env["NEUROSCOPE_TEST_KILL_AT"]
    write_saelens(copy, "topk", "blocks.1.hook_mlp_out", 32, 48, k=4, seed=7)  # new weights, same shapes
    done = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True)
    lines = [line for line in done.stderr.splitlines() if line.startswith("neuroscope")]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1 and "sae:tk changed since the checkpoint" in lines[0], lines
    assert (tmp_path / "killed" / "checkpoint.npz").exists()
