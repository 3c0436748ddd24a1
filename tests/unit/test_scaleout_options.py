"""What `--dask` accepts and refuses, before any cluster or model (seconds)."""

from __future__ import annotations

import pytest

from indexer.cli import main
from indexer.config import IndexConfig
from indexer.scaleout.spec import DaskSpec, check_options, parse_dask
from indexer.errors import ConfigError


def test_parse_dask():
    assert parse_dask("local:3") == DaskSpec("local", workers=3)
    assert parse_dask("local").workers >= 1
    assert parse_dask("tcp://10.1.2.3:8786") == DaskSpec("tcp", address="tcp://10.1.2.3:8786")
    for bad in ("local:0", "local:x", "10.1.2.3:8786", "tcp://host", "yarn"):
        with pytest.raises(ConfigError, match="expected local, local:N"):
            parse_dask(bad)


@pytest.mark.parametrize("extra,message", [
    ({"shard": (1, 2)}, "--shard and --dask do not mix"),
    ({"device": "cuda:1"}, "each worker uses its own device"),
])
def test_options_that_make_no_sense_on_a_cluster_are_refused(extra, message):
    cfg = IndexConfig(model="toy-1l", corpus=["code"], out="x", dask="local:2", **extra)
    with pytest.raises(ConfigError, match=message):
        check_options(cfg)


def test_the_cli_says_so_in_one_line(tmp_path, capsys):
    base = ["index", "--model", "toy-1l", "--corpus", "code", "--out", str(tmp_path / "o")]
    assert main([*base, "--dask", "local:2", "--shard", "0/2"]) == 1
    assert main([*base, "--dask", "sometimes"]) == 1
    assert main([*base, "--dask", "local:2", "--resume"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "neuroscope: error: --shard and --dask do not mix: --dask splits the stream into shards itself (--dask-shards)",
        "neuroscope: error: --dask 'sometimes': expected local, local:N (N >= 1 workers) or tcp://HOST:PORT",
        f"neuroscope: error: --resume: no Dask job in {tmp_path / 'o'} (nothing to resume; drop --resume to start)",
    ]
    assert not (tmp_path / "o").exists()


def test_a_domain_error_on_a_worker_comes_back_as_a_result_not_a_retry(tmp_path):
    import numpy as np

    from indexer.scaleout.pieces import Piece
    from indexer.scaleout.shard import index_shard
    from indexer.scaleout.token_store import ShardSlice
    from indexer.scaleout.tokenize import tokenize_piece

    cfg = IndexConfig(model=str(tmp_path / "no-such-model"), corpus=["code"], out="x", dask="local:2")
    part = ShardSlice(0, *(np.zeros(0, np.int64) for _ in range(4)))
    for result in (index_shard(cfg.to_dict(), str(tmp_path / ".shards"), 0, 2, part, "topic", {}),
                   tokenize_piece(cfg.to_dict(), str(tmp_path / ".shards"), Piece(0, 0, 8), {})):
        assert result["kind"] == "ModelSpecError" and str(tmp_path / "no-such-model") in result["error"]


def test_dask_shards_needs_dask():
    with pytest.raises(ConfigError, match="--dask-shards must be at least 1, with --dask"):
        IndexConfig(model="toy-1l", corpus=["code"], out="x", dask_shards=8).validate()
    with pytest.raises(ConfigError, match="--dask-shards must be at least 1"):
        IndexConfig(model="toy-1l", corpus=["code"], out="x", dask="local:2", dask_shards=0).validate()


def test_the_command_line_imports_dask_only_when_used():
    import subprocess
    import sys

    code = ("import sys, indexer.cli, indexer.scaleout.spec; indexer.cli.build_parser(); "
            "sys.exit(int(any(m in sys.modules for m in ('dask', 'distributed'))))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_task_thread_gets_its_share_of_the_cores():
    """A task runs in a Dask worker's thread, not the one that loaded the model: its torch
    (OpenMP) and numba thread counts are set there, to its share of the host's cores."""
    import os
    import threading

    import numba
    import torch

    from indexer.scaleout.worker import set_threads

    cores = len(os.sched_getaffinity(0))
    got: dict = {}

    def task() -> None:
        set_threads("cpu", "h", {"h": cores})  # as many workers as cores: one thread each
        got["torch"], got["numba"] = torch.get_num_threads(), numba.get_num_threads()

    before = torch.get_num_threads()
    try:
        thread = threading.Thread(target=task)
        thread.start()
        thread.join()
    finally:
        torch.set_num_threads(before)
    assert got == {"torch": 1, "numba": 1}
