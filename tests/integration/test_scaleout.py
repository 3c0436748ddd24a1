"""Scale-out on Dask with real worker processes on loopback: the same index three ways; a
stopped client resumed; an existing scheduler. The cluster at work (many shards, a late worker,
a killed one) is in test_scaleout_cluster.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from indexer.api import Index
from indexer.cli import main
from indexer.run.engine import index

from helpers.configs import base_config
from helpers.indexes import assert_same_index, index_shards_and_merge

# Long enough that a shard is still streaming when its first checkpoint appears.
TOKENS = 6000


@pytest.fixture(scope="module")
def cfg(tiny_model_dir, tmp_path_factory):
    return base_config(str(tiny_model_dir), str(tmp_path_factory.mktemp("single") / "idx"), tokens=TOKENS,
                       checkpoint_every=1)


@pytest.fixture(scope="module")
def single_run(cfg) -> str:
    index(cfg, progress=False)
    return cfg.out


def test_one_process_shards_and_dask_give_the_same_index(cfg, single_run, tmp_path, capsys):
    merged = index_shards_and_merge(cfg, tmp_path)

    out = tmp_path / "dask"
    assert main(["index", "--quiet", *replace(cfg, out=str(out), dask="local:2").to_argv()]) == 0
    assert "index written to" in capsys.readouterr().out

    # The stats' sums are exact: mean and std equal the single run's bit for bit.
    assert_same_index(single_run, merged)
    assert_same_index(single_run, str(out))
    manifest = Index.open(str(out)).manifest
    assert manifest["status"] == "complete" and manifest["counts"]["tokens"] == TOKENS
    dask = manifest["dask"]
    assert dask["n_workers"] == 2 and dask["n_shards"] == 2 and len(dask["workers"]) == 2  # no shard under 1M tokens
    assert [s["shard"] for s in dask["shards"]] == [0, 1]
    assert sum(s["tokens"] for s in dask["shards"]) == TOKENS == dask["tokens_tokenized"]["stream"]
    assert all(s["attempts"] == 1 and s["stream_seconds"] > 0 and s["device"] == "cpu" for s in dask["shards"])
    assert [s["first_ctx"] for s in dask["shards"][1:]] == [s["last_ctx"] + 1 for s in dask["shards"][:-1]]
    assert set(dask["phase_shares"]) == {"cluster", "open", "tokenize", "stream", "merge", "finalize"}
    assert abs(sum(dask["phase_shares"].values()) - 1) < 0.01
    assert sorted(m["site"] for m in dask["merges"]) == sorted(f"{s['name']}/{s['layer']}" for s in manifest["sites"])
    assert manifest["corpora"] == Index.open(single_run).manifest["corpora"]  # the counts too
    assert not (out / ".shards").exists() and not (out / "checkpoint.npz").exists()


def _batches(shard: Path) -> int:
    """The batches a shard reported done (progress.json, twice a second)."""
    try:
        return json.loads((shard / "progress.json").read_text())["batches"]
    except (OSError, ValueError):
        return 0


def test_an_existing_scheduler_is_used_over_tcp(tiny_model_dir, tmp_path):
    from distributed import LocalCluster

    small = base_config(str(tiny_model_dir), str(tmp_path / "one"), tokens=1000)
    index(small, progress=False)
    with LocalCluster(host="127.0.0.1", dashboard_address=None, n_workers=1, threads_per_worker=1,
                      processes=True) as cluster:
        out = tmp_path / "tcp"
        assert main(["index", "--quiet", *replace(small, out=str(out), dask=cluster.scheduler_address).to_argv()]) == 0
    assert_same_index(small.out, str(out))
    dask = Index.open(str(out)).manifest["dask"]
    assert dask["scheduler"] == cluster.scheduler_address and dask["n_shards"] == 1


def test_a_stopped_client_resumes_the_job_from_the_shard_checkpoints(cfg, single_run, tmp_path):
    out = tmp_path / "stopped"
    args = ["index", "--quiet", *replace(cfg, out=str(out), dask="local:2", dask_shards=2, checkpoint_every=4).to_argv()]
    # Its own process group: the client, the nannies and the workers all go at once.
    proc = subprocess.Popen([sys.executable, "-m", "indexer.cli", *args],
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "NEUROSCOPE_TEST_SLOW_AT": "batch:0.1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shard = out / ".shards" / "shard-0-of-2"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and _batches(shard) < 6:
        time.sleep(0.02)
    assert proc.poll() is None and (shard / "checkpoint.npz").exists(), "shard 0 never got past its first checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    assert main(["index", "--quiet", "--out", str(out), "--dask", "local:2", "--resume"]) == 0
    assert_same_index(single_run, str(out))
    shard0 = Index.open(str(out)).manifest["dask"]["shards"][0]
    assert shard0["attempts"] == 2 and 4 <= shard0["resumed_from_batch"] < shard0["batches"]
