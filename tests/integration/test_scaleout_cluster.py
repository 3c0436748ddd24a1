"""A Dask job at work, on real worker processes on loopback: 4 workers, 16 shards, 2 corpora of
short documents. While it runs, a fifth worker joins and a worker is killed mid-shard. The
index is the single run's all the same; every worker tokenized about its share of the stream
(the manifest says so); the late worker indexed shards; the killed shard resumed from its
checkpoint on another worker."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.api import Index
from indexer.run.engine import index
from indexer.scaleout.job import index_on_dask

from helpers.configs import base_config
from helpers.indexes import assert_same_index

TOKENS = 6000
WORKERS = 4
SLOW_BATCH_S = 0.4  # per batch on every worker: a shard (3 batches) lasts long enough to be caught mid-way


def short_documents(corpus: str, n: int, size: int) -> list[str]:
    """The embedded corpus cut into ``n`` documents of about ``size`` characters."""
    from indexer.inputs.data import corpora_dir

    texts = pq.read_table(corpora_dir() / f"{corpus}.parquet", columns=["text"]).column(0).to_pylist()
    pieces = [t[i:i + size] for t in texts[:40] for i in range(0, min(len(t), 20 * size), size)]
    return [p for p in pieces if p.strip()][:n]


@pytest.fixture(scope="module")
def cfg(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    corpora = []
    for name, size in (("code", 160), ("prose", 240)):
        pq.write_table(pa.table({"text": short_documents(name, 500, size)}), folder / f"{name}.parquet", row_group_size=64)
        corpora.append(f"{name}={folder / name}.parquet")
    return base_config(str(tiny_model_dir), str(folder / "single"), corpus=corpora, tokens=TOKENS, checkpoint_every=1)


def test_sixteen_shards_a_late_worker_and_a_killed_one_give_the_single_runs_index(cfg, tmp_path, monkeypatch):
    from distributed import LocalCluster

    index(cfg, progress=False)
    monkeypatch.setenv("NEUROSCOPE_TEST_SLOW_AT", f"batch:{SLOW_BATCH_S}")  # the workers inherit it
    out = tmp_path / "dask"
    with LocalCluster(host="127.0.0.1", dashboard_address=None, n_workers=WORKERS, threads_per_worker=1,
                      processes=True) as cluster:
        job = _Job(replace(cfg, out=str(out), dask=cluster.scheduler_address, dask_shards=4 * WORKERS))
        _wait_for(lambda: (out / ".shards" / "job.json").is_file() or not job.alive(), "the job never started")
        cluster.scale(WORKERS + 1)  # a worker joins after the start
        victim, shard = _kill_a_worker_mid_shard(out / ".shards", job)
        job.join()
    assert_same_index(cfg.out, str(out))

    dask = Index.open(str(out)).manifest["dask"]
    assert dask["n_workers"] == WORKERS and dask["n_shards"] == 4 * WORKERS
    shards = dask["shards"]
    stream = dask["tokens_tokenized"]["stream"]
    assert stream == TOKENS == sum(s["tokens"] for s in shards)
    one_shard = stream / len(shards)
    tokenized = dask["tokens_tokenized"]["per_worker"]
    assert sum(tokenized.values()) >= stream and all(s["tokens_tokenized"] == 0 for s in shards)
    assert max(tokenized.values()) <= 1.1 * stream / WORKERS + one_shard, tokenized
    late = {w["address"] for w in dask["workers"] if w["name"] == str(WORKERS)}
    assert late and any(s["address"] in late for s in shards), "the late worker indexed no shard"
    killed = shards[shard]
    assert killed["attempts"] == 2 and killed["pid"] != victim
    assert 1 <= killed["resumed_from_batch"] < killed["batches"]
    print(f"\n{len(dask['pieces'])} pieces, tokens tokenized per worker {sorted(tokenized.values())} "
          f"(share {stream / WORKERS:.0f}); late worker's shards: {sum(s['address'] in late for s in shards)}; "
          f"shard {shard} killed after its checkpoint at batch {killed['resumed_from_batch']}; phases {dask['phases_s']}")


class _Job:
    """``index_on_dask`` in a thread (the test kills and adds workers meanwhile)."""

    def __init__(self, cfg):
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(cfg,), daemon=True)
        self.thread.start()

    def _run(self, cfg) -> None:
        try:
            index_on_dask(cfg, progress=False)
        except BaseException as e:  # re-raised by join
            self.error = e

    def alive(self) -> bool:
        return self.thread.is_alive()

    def join(self) -> None:
        self.thread.join(timeout=300)
        assert not self.thread.is_alive(), "the job did not end"
        if self.error is not None:
            raise self.error


def _kill_a_worker_mid_shard(root: Path, job: _Job) -> tuple[int, int]:
    """SIGKILL the worker of a shard that has checkpointed a batch and has batches left."""
    found: list[tuple[int, int]] = []

    def mid_shard() -> bool:
        for folder in root.glob("shard-*-of-*"):
            progress = _read(folder / "progress.json")
            if 1 <= progress.get("batches", 0) <= 2 and (folder / "checkpoint.npz").is_file():
                found.append((progress["pid"], int(folder.name.split("-")[1])))
                return True
        return not job.alive()

    _wait_for(mid_shard, "no shard was caught mid-way")
    if not found:
        job.join()  # its error, if that is why it ended
        raise AssertionError("the job ended before a shard was caught mid-way")
    os.kill(found[0][0], signal.SIGKILL)
    return found[0]


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _wait_for(condition, message: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, message
        time.sleep(0.02)
