"""The client side of `neuroscope index --dask`: split, submit, follow, reduce, finalize once.

The stream is split into one deterministic shard per worker (``ctx_id % n == i``, the same
split as ``--shard I/N``). Each shard is a Dask task (``indexer.dist.shard.index_shard``)
that checkpoints into ``OUT/.shards/shard-i-of-n`` and is retried, from that checkpoint, when
its worker dies or it fails. The shards' recorder states are merged pairwise on the workers
(a tree reduction; the merge is exact), and the client writes the one index into ``OUT``
through the same finalize as a single run: tables first, the manifest last. The shard folders
are removed once the manifest is written.

`--resume` continues a job whose client was stopped: the shards start again from their
checkpoints, with the shard count of the first start (``OUT/.shards/job.json``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from indexer import errors
from indexer.config import IndexConfig
from indexer.dist.cluster import open_client, workers_of, workers_per_host
from indexer.dist.shard import index_shard, merge_results, shard_dir
from indexer.dist.spec import JOB_FILE, SHARDS_DIR, check_options
from indexer.errors import ConfigError, IndexDirError, NeuroscopeError
from indexer.run.checkpoint import load_states
from indexer.run.engine import Run
from indexer.run.resume import RESUME_FREE
from indexer.run.outdir import prepare_out_dir
from indexer.store.manifest import MANIFEST
from indexer.store.writer import atomic_write_bytes

RETRIES = 3  # per task, on an exception; a worker that dies is also retried (Dask's allowed-failures)
POLL_S = 0.2


def index_on_dask(cfg: IndexConfig, progress: bool = True) -> Path:
    """Run (or resume) an indexing job on the Dask cluster ``cfg.dask`` names; the finished
    index is written into ``cfg.out`` by this process."""
    check_options(cfg)
    cfg, out, saved_shards = _prepare(cfg)
    cfg.validate()
    spec = check_options(cfg)
    root = out / SHARDS_DIR
    with open_client(spec) as client:
        workers = workers_of(client)
        n = saved_shards or len(workers)
        if saved_shards is None:
            root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(root / JOB_FILE, json.dumps({"config": cfg.to_dict(), "shards": n}).encode())
        started = time.perf_counter()
        result = _run_shards(client, cfg, root, n, workers, progress)
        wall = time.perf_counter() - started
        scheduler = client.scheduler.address
    run = Run.open(replace(cfg, shard=(0, 1), resume=False), out)
    run.recorders, _ = load_states(result["states"], run.plan, run.device)
    shards = sorted(result["shards"], key=lambda s: s["shard"])
    run.tokens_done = sum(s["tokens"] for s in shards)
    run.position = sum(s["contexts"] for s in shards)
    run.batches_done = sum(s["batches"] for s in shards)
    run.seconds = wall  # the job's streaming wall time: tokens_per_second is the whole cluster's
    for s in shards:
        for name, tokens in s["corpus_tokens"].items():
            run.corpus_tokens[name] = run.corpus_tokens.get(name, 0) + tokens
    run.notes = {"dask": {
        "cluster": cfg.dask, "scheduler": scheduler, "n_workers": len(workers), "workers": workers,
        "devices": sorted({f"{s['device']} ({s['device_name']})" for s in shards}),
        "n_shards": n, "stream_wall_seconds": round(wall, 3),
        "redone_batches": sum(s["redone_batches"] for s in shards), "shards": shards,
    }}
    run.store_folders = [shard_dir(root, i, n) for i in range(n)]  # the shards' context stores
    path = run.finalize(progress)
    shutil.rmtree(root, ignore_errors=True)  # the manifest is written: the checkpoints are no longer needed
    return path


def _prepare(cfg: IndexConfig) -> tuple[IndexConfig, Path, int | None]:
    """The job's config, its output folder (created or checked), and the shard count of a
    job being resumed (None for a new job)."""
    out = Path(cfg.out).expanduser()
    job = out / SHARDS_DIR / JOB_FILE
    if cfg.resume:
        if (out / MANIFEST).is_file():
            raise IndexDirError(f"--resume: the index in {cfg.out} is already complete; nothing to resume")
        if not job.is_file():
            raise IndexDirError(f"--resume: no Dask job in {cfg.out} (nothing to resume; drop --resume to start)")
        saved = json.loads(job.read_text())
        return _resumed_config(cfg, IndexConfig.from_dict(saved["config"])), out, int(saved["shards"])
    if cfg.overwrite and job.is_file():
        shutil.rmtree(job.parent)  # a stopped Dask job's shards: ours to delete
    prepare_out_dir(cfg.out, resume=False, overwrite=cfg.overwrite)
    return cfg, out, None


def _resumed_config(cfg: IndexConfig, saved: IndexConfig) -> IndexConfig:
    free = RESUME_FREE | {"dask", "out"}
    defaults, given, before = IndexConfig().to_dict(), cfg.to_dict(), saved.to_dict()
    clashes = [k for k, v in given.items() if k not in free and v != defaults[k] and v != before[k]]
    if clashes:
        raise ConfigError(f"--resume: options differ from the stopped Dask job: {', '.join(clashes)}")
    for key in free:
        setattr(saved, key, getattr(cfg, key))
    return saved


def _run_shards(client: Any, cfg: IndexConfig, root: Path, n: int, workers: list[dict[str, Any]],
                progress: bool) -> dict[str, Any]:
    """Submit the n shard tasks and their tree reduction; follow them; the merged result."""
    from distributed import KilledWorker

    token = uuid.uuid4().hex[:8]
    topic = f"neuroscope-progress-{token}"
    hosts = workers_per_host(workers)
    level = [
        client.submit(index_shard, cfg.to_dict(), str(root), i, n, topic, hosts,
                      key=f"neuroscope-shard-{i}-of-{n}-{token}", retries=RETRIES)
        for i in range(n)
    ]
    depth = 0
    while len(level) > 1:
        depth += 1
        pairs = [client.submit(merge_results, level[k], level[k + 1], key=f"neuroscope-merge-{depth}-{k // 2}-{token}",
                               retries=RETRIES)
                 for k in range(0, len(level) - 1, 2)]
        level = pairs + level[len(level) - len(level) % 2:]
    final = level[0]
    _follow(client, final, topic, cfg.tokens, n, progress)
    try:
        result = final.result()
    except KilledWorker as e:
        raise NeuroscopeError(
            f"a shard task killed its worker again and again ({e}); out of memory? The shard checkpoints are kept "
            f"in {root}: fix the cause and rerun with --resume"
        ) from None
    if "error" in result:
        raise getattr(errors, result.get("kind", ""), NeuroscopeError)(result["error"])
    return result


def _follow(client: Any, final: Any, topic: str, total: int | None, n: int, progress: bool) -> None:
    """A progress bar over the whole job (every shard's tokens) until ``final`` is done."""
    from tqdm import tqdm

    latest: dict[int, int] = {}

    def on_event(event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1]
        latest[int(msg["shard"])] = int(msg["tokens"])

    client.subscribe_topic(topic, on_event)
    bar = tqdm(total=total, unit="tok", unit_scale=True, dynamic_ncols=True, disable=not progress, file=sys.stderr,
               desc=f"loading the model on {n} workers", smoothing=0.05)
    streaming = False
    try:
        while not final.done():
            time.sleep(POLL_S)
            if latest and not streaming:  # rate and ETA from the first batch on, not from the model loads
                streaming = True
                bar.set_description(f"indexing ({n} shards on Dask)", refresh=False)
                bar.reset(total=total)
            _advance(bar, sum(latest.values()))
        time.sleep(POLL_S)  # the shards' last reports
        _advance(bar, sum(latest.values()))
    finally:
        client.unsubscribe_topic(topic)
        bar.close()


def _advance(bar: Any, done: int) -> None:
    """Move the bar to ``done`` tokens (back, when a shard restarts from its checkpoint)."""
    if done >= bar.n:
        bar.update(done - bar.n)
    else:
        bar.n = done
        bar.refresh()
