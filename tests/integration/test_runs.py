"""Overnight-run behaviour: resume after a kill, shards + merge, backends, sql on a real index."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from indexer.api import Index
from indexer.run.engine import index
from indexer.run.merge import merge

from helpers.configs import base_config
from helpers.indexes import assert_same_index


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> str:
    return str(tiny_model_dir)


@pytest.fixture(scope="module")
def single_run(model_dir, tmp_path_factory) -> str:
    cfg = base_config(model_dir, str(tmp_path_factory.mktemp("single") / "idx"))
    index(cfg, progress=False)
    return cfg.out


def test_shards_merge_into_the_single_run(model_dir, single_run, tmp_path):
    shards = []
    for i in range(3):
        cfg = base_config(model_dir, str(tmp_path / f"shard{i}"), shard=(i, 3))
        index(cfg, progress=False)
        shards.append(cfg.out)
    assert Index.open(shards[1]).sql("SELECT count(*) AS n FROM contexts WHERE ctx_id % 3 != 1")["n"][0] == 0
    merge(shards, str(tmp_path / "merged"), progress=False)
    # The stats' sums are exact, so mean and std equal the single run's bit for bit.
    assert_same_index(single_run, str(tmp_path / "merged"))
    assert Index.open(str(tmp_path / "merged")).manifest["counts"]["tokens"] == 2500


def test_merge_refuses_incomplete_or_mismatched_shards(model_dir, single_run, tmp_path):
    from indexer.errors import IndexDirError

    cfg = base_config(model_dir, str(tmp_path / "s0"), shard=(0, 2))
    index(cfg, progress=False)
    with pytest.raises(IndexDirError, match="not exactly the shards"):
        merge([cfg.out], str(tmp_path / "m"), progress=False)
    other = base_config(model_dir, str(tmp_path / "s1"), shard=(1, 2), seed=1)
    index(other, progress=False)
    with pytest.raises(IndexDirError, match="other options"):
        merge([cfg.out, other.out], str(tmp_path / "m2"), progress=False)
    assert not (tmp_path / "m").exists() and not (tmp_path / "m2").exists()


def test_resume_after_kill_equals_uninterrupted_run(model_dir, single_run, tmp_path):
    out = tmp_path / "killed"
    cfg = base_config(model_dir, str(out))  # the single run's options
    args = _cli_args(cfg)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # Batches slowed down (only the killed run's), so that the kill lands mid-stream.
    proc_env = {**env, "NEUROSCOPE_TEST_SLOW_AT": "batch:0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "indexer.cli", *args], env=proc_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "checkpoint.npz"
    deadline = time.time() + 300
    first = None
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists():
            first = first or checkpoint.stat().st_mtime_ns
            if checkpoint.stat().st_mtime_ns != first:  # a few checkpoints in: kill mid-run
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    done = subprocess.run([sys.executable, "-m", "indexer.cli", *_cli_args(replace(cfg, resume=True))],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_index(single_run, str(out))


def test_resume_needs_a_checkpoint_and_out_must_be_empty(model_dir, single_run, tmp_path):
    from indexer.errors import IndexDirError

    with pytest.raises(IndexDirError, match="not empty"):
        index(base_config(model_dir, single_run), progress=False)
    with pytest.raises(IndexDirError, match="already complete"):
        index(base_config(model_dir, single_run, resume=True), progress=False)
    with pytest.raises(IndexDirError, match="no checkpoint"):
        index(base_config(model_dir, str(tmp_path / "fresh"), resume=True), progress=False)


def test_torch_backend_gives_the_same_index_and_never_syncs(model_dir, single_run, tmp_path, monkeypatch):
    """The torch recorders' index equals the numba one, and no pass of the model (the
    forward, its hooks, the head metrics, the recorders, the heads' attention rows cut as on
    an accelerator) dispatches an op that would make the host wait for a GPU (helpers/syncs.py)."""
    from helpers.syncs import counted_passes

    monkeypatch.setenv("NEUROSCOPE_RECORDER_BACKEND", "torch")
    monkeypatch.setattr("indexer.run.attention_rows.CUT_ON_DEVICE", True)  # the heads' rows as on an accelerator
    cfg = base_config(model_dir, str(tmp_path / "torch"))
    with counted_passes() as counters:
        index(cfg, progress=False)
    assert_same_index(single_run, cfg.out)
    assert len(counters) >= 5 and all(not c.by_line for c in counters), [dict(c.by_line) for c in counters]


def _cli_args(cfg) -> list[str]:
    return ["index", "--quiet", *cfg.to_argv()]
