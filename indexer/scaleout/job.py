"""The client side of `neuroscope index --dask`: tokenize once, index many shards, merge
pairwise, finalize once.

1. **Tokenize** (``tokenize_phase.py``): the stream's token ids are written once into the token
   store (``OUT/.shards/tokens``), in pieces dealt evenly to the workers (each loads its model
   first; this process loads its own meanwhile, for finalize); the stream is laid out from
   them exactly as the single run reads it (ctx_id, budgets, order, counts).
2. **Index** (``shard.py``): the stream is cut into ``--dask-shards`` contiguous shards of about
   the same number of tokens (default: 4 per worker present at the start, none under 1M
   tokens, 64M on GPUs: ``shard_count``), each a Dask task
   reading only its own contexts from the token store, handed out as workers free up (a late
   worker takes the next one). A shard checkpoints into ``OUT/.shards/shard-i-of-n`` and is
   retried, from that checkpoint, when its worker dies.
3. **Merge** (``reduce.py``): the shards' recorder states are merged pairwise on the workers, a
   tree of tasks per site, as shards finish (the merge is exact).
4. **Finalize**: this process writes the one index into ``OUT`` through the same finalize as a
   single run, tables first, the manifest last (with the job's figures: ``figures.py``), and
   removes ``OUT/.shards``.

`--resume` continues a job whose client was stopped: the layout is read back (no tokenizing
again once it is written) and the shards start again from their checkpoints, with the shard
count of the first start (its workers: ``OUT/.shards/job.json``).
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from indexer.config import IndexConfig
from indexer.errors import ConfigError, CorpusError, IndexDirError, NeuroscopeError
from indexer.run.engine import what_was_read
from indexer.run.outdir import prepare_out_dir
from indexer.run.resume import RESUME_FREE
from indexer.scaleout.cluster import open_client, workers_of, workers_per_host
from indexer.scaleout.figures import ClusterRun, Phases, dask_notes
from indexer.scaleout.follow import follow
from indexer.scaleout.layout import Layout, load_layout, save_layout
from indexer.scaleout.reduce import merge_trees, merged_recorders
from indexer.scaleout.shard import index_shard, shard_dir
from indexer.scaleout.spec import JOB_FILE, SHARDS_DIR, check_options
from indexer.scaleout.token_store import TOKENS_DIR
from indexer.scaleout.tokenize_phase import tokenize_stream
from indexer.scaleout.worker import checked, preload
from indexer.store.manifest import MANIFEST
from indexer.store.writer import atomic_write_bytes

SHARDS_PER_WORKER = 4
MIN_SHARD_TOKENS = 1 << 20  # on CPU a shard's stream outweighs its state's write and merge (~1 ms per feature)
MIN_SHARD_TOKENS_GPU = 1 << 26  # a GPU streams ~100x faster, the state costs the same
LAYOUT_FILE = "layout.npz"  # under SHARDS_DIR: the stream's layout, once tokenized
RETRIES = 3  # per task, on an exception; a worker that dies is also retried (Dask's allowed-failures)


def index_on_dask(cfg: IndexConfig, progress: bool = True) -> Path:
    """Run (or resume) an indexing job on the Dask cluster ``cfg.dask`` names; the finished
    index is written into ``cfg.out`` by this process."""
    phases = Phases()
    check_options(cfg)
    cfg, out, saved_workers = _prepare(cfg)
    cfg.validate()
    spec = check_options(cfg)
    root = out / SHARDS_DIR
    with open_client(spec) as client:
        phases.lap("cluster")
        workers = workers_of(client)
        started_with = saved_workers or len(workers)  # a resumed job keeps the shards of its first start
        if saved_workers is None:
            root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(root / JOB_FILE, json.dumps({"config": cfg.to_dict(), "workers": started_with}).encode())
        hosts = workers_per_host(workers)
        token = uuid.uuid4().hex[:8]
        loads = [client.submit(preload, cfg.to_dict(), hosts, workers=[w["address"]], key=f"neuroscope-preload-{k}-{token}")
                 for k, w in enumerate(workers)]  # each worker's first task: its model, then its pieces
        run = ClusterRun.open(replace(cfg, shard=(0, 1), resume=False), out)  # this process's model: for finalize
        phases.lap("open")
        layout, pieces, n = _layout(client, cfg, run, root, started_with, hosts, loads, progress)
        phases.lap("tokenize")
        run.contexts.counters = layout.counters  # exactly the documents the stream covers
        if layout.n_contexts == 0:
            raise CorpusError(f"nothing to index: {what_was_read(run.contexts)}")
        result = _index_shards(client, cfg, run, root, n, layout, hosts, phases, progress)
        scheduler = client.scheduler.address
        seen = workers_of(client)
        loads = [f.result() for f in loads if f.status == "finished"]
    phases.lap("cluster")  # its closing
    run.recorders = merged_recorders(result["roots"], run.site_device)
    shards = sorted(result["shards"], key=lambda s: s["shard"])
    run.tokens_done = sum(s["tokens"] for s in shards)
    run.position = sum(s["contexts"] for s in shards)
    run.batches_done = math.ceil(run.position / cfg.batch_size)  # a single run's batches of the same contexts
    run.seconds = phases.seconds["stream"] + phases.seconds["merge"]  # the cluster's: tokens_per_second is its
    for s in shards:
        for name, tokens in s["corpus_tokens"].items():
            run.corpus_tokens[name] = run.corpus_tokens.get(name, 0) + tokens
    run.notes = {"dask": dask_notes(cfg, scheduler, workers, seen, shards, pieces, result.get("merges", []), loads,
                                    layout)}
    run.phases = phases
    run.store_folders = [shard_dir(root, i, len(shards)) for i in range(len(shards))]  # the shards' context stores
    path = run.finalize(progress)
    shutil.rmtree(root, ignore_errors=True)  # the manifest is written: the checkpoints are no longer needed
    return path


def shard_count(requested: int | None, workers: int, tokens: int, gpu: bool = False) -> int:
    """``--dask-shards``, or 4 per worker of the first start but none under ``MIN_SHARD_TOKENS``
    (``MIN_SHARD_TOKENS_GPU`` on GPU workers), and at least one per worker: each shard costs one
    write and one merge of the recorder state (~1 ms per feature on a CPU), which a shard of
    fewer tokens does not outweigh (README, "Scaling model").

    >>> shard_count(None, 4, 100_000_000), shard_count(None, 2, 400_000), shard_count(16, 4, 6000)
    (16, 2, 16)
    >>> shard_count(None, 8, 256_000_000, gpu=True), shard_count(None, 1, 256_000_000, gpu=True)
    (8, 3)
    """
    if requested:
        return requested
    least = MIN_SHARD_TOKENS_GPU if gpu else MIN_SHARD_TOKENS
    return max(workers, min(SHARDS_PER_WORKER * workers, tokens // least))


def _layout(client: Any, cfg: IndexConfig, run: ClusterRun, root: Path, workers: int, hosts: dict[str, int],
            loads: list[Any], progress: bool) -> tuple[Layout, list[dict[str, Any]], int]:
    """The stream's layout, the pieces' figures and the shard count (``shard_count`` for the
    ``workers`` of the first start and the device the models loaded on): read back for a resumed
    job that got that far, else tokenized now (pieces of about an eighth of a worker's share)."""
    if (root / LAYOUT_FILE).is_file():
        layout, figures = load_layout(root / LAYOUT_FILE)
        return layout, figures["pieces"], figures["shards"]
    shutil.rmtree(root / TOKENS_DIR, ignore_errors=True)  # pieces of a stopped tokenize phase: done again
    try:
        layout, pieces = tokenize_stream(client, cfg, run.contexts, root, SHARDS_PER_WORKER * workers, hosts, progress)
    except _killed_worker() as e:
        raise _lost(e, root) from None
    gpu = any(f.result()["device"].startswith("cuda") for f in loads if f.status == "finished")
    n = shard_count(cfg.dask_shards, workers, int(layout.text_tokens().sum()), gpu)
    save_layout(root / LAYOUT_FILE, layout, {"pieces": pieces, "shards": n})
    return layout, pieces, n


def _index_shards(client: Any, cfg: IndexConfig, run: ClusterRun, root: Path, n: int, layout: Layout,
                  hosts: dict[str, int], phases: Phases, progress: bool) -> dict[str, Any]:
    """Submit the shards and every site's tree of merges; follow them; the shards' figures, the
    merges' and every site's merged state file."""
    token = uuid.uuid4().hex[:8]
    topic = f"neuroscope-progress-{token}"
    bounds = layout.shard_bounds(n)
    m = len(bounds) - 1  # fewer than n only for a stream of fewer contexts
    leaves = [client.submit(index_shard, cfg.to_dict(), str(root), i, m, layout.shard(int(bounds[i]), int(bounds[i + 1])),
                            topic, hosts, key=f"neuroscope-shard-{i}-of-{m}-{token}", retries=RETRIES)
              for i in range(m)]
    done = threading.Semaphore(0)
    for leaf in leaves:
        leaf.add_done_callback(lambda _: done.release())
    trees = merge_trees(client, leaves, run.plan, root, token)
    watcher = threading.Thread(target=_lap_when_all, args=(done, m, phases), daemon=True)
    watcher.start()
    follow(client, list(trees.values()), topic, int(layout.text_tokens().sum()), m, progress)
    try:
        roots = {site: checked(future.result()) for site, future in trees.items()}
        shards = [checked(result)["shards"][0] for result in client.gather(leaves)]
    except _killed_worker() as e:
        raise _lost(e, root) from None
    watcher.join()
    phases.lap("merge")
    return {"shards": shards, "roots": roots, "merges": [m for r in roots.values() for m in r.get("merges", [])]}


def _lap_when_all(done: threading.Semaphore, n: int, phases: Any) -> None:
    for _ in range(n):
        done.acquire()
    phases.lap("stream")


def _killed_worker() -> type:
    from distributed import KilledWorker

    return KilledWorker


def _lost(e: Exception, root: Path) -> NeuroscopeError:
    return NeuroscopeError(f"a task killed its worker again and again ({e}); out of memory? The job's checkpoints are "
                           f"kept in {root}: fix the cause and rerun with --resume")


def _prepare(cfg: IndexConfig) -> tuple[IndexConfig, Path, int | None]:
    """The job's config, its output folder (created or checked), and the workers a job being
    resumed started with (None for a new job)."""
    out = Path(cfg.out).expanduser()
    job = out / SHARDS_DIR / JOB_FILE
    if cfg.resume:
        if (out / MANIFEST).is_file():
            raise IndexDirError(f"--resume: the index in {cfg.out} is already complete; nothing to resume")
        if not job.is_file():
            raise IndexDirError(f"--resume: no Dask job in {cfg.out} (nothing to resume; drop --resume to start)")
        saved = json.loads(job.read_text())
        if "workers" not in saved:
            raise IndexDirError(f"--resume: the Dask job in {cfg.out} was started by an older neuroscope; "
                                "start again with --overwrite")
        return _resumed_config(cfg, IndexConfig.from_dict(saved["config"])), out, int(saved["workers"])
    if cfg.overwrite and job.is_file():
        shutil.rmtree(job.parent)  # a stopped Dask job's shards: ours to delete
    prepare_out_dir(cfg.out, resume=False, overwrite=cfg.overwrite)
    return cfg, out, None


def _resumed_config(cfg: IndexConfig, saved: IndexConfig) -> IndexConfig:
    free = RESUME_FREE | {"dask", "out", "dask_shards"}
    defaults, given, before = IndexConfig().to_dict(), cfg.to_dict(), saved.to_dict()
    clashes = [k for k, v in given.items() if k not in free and v != defaults[k] and v != before[k]]
    if clashes:
        raise ConfigError(f"--resume: options differ from the stopped Dask job: {', '.join(clashes)}")
    for key in free - {"dask_shards"}:  # the shard count of the first start stands
        setattr(saved, key, getattr(cfg, key))
    return saved
