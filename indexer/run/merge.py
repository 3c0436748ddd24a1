"""`neuroscope merge`: combine the indexes of the shards of one run into the index one run gives.

Each finished shard keeps its final recorder state (``state.npz``). Recorder states merge
exactly (top-k by value, samples by their per-token priority, stats and histograms by
addition), and every shard binned with the same quantile edges, so the merged recorders equal
those of a single run (top-k windows included); finalize then reads the contexts from the
shards' context stores (``indexer.run.context_store``, which a shard's index keeps) and re-runs
the sample contexts as a single run would.
"""

from __future__ import annotations

import math
from pathlib import Path

from indexer.config import IndexConfig
from indexer.errors import IndexDirError
from indexer.inputs.corpus import CorpusCounters
from indexer.run.checkpoint import FINAL_STATE
from indexer.run.outdir import claimed_out_dir
from indexer.run.safety import failed_writes_explained
from indexer.store.manifest import read_manifest

# Config fields that may differ between the shards of one run.
SHARD_FREE = {"shard", "out", "resume", "overwrite", "checkpoint_every", "checkpoint_minutes", "device", "device_map", "dask", "allow_large",
              "window_pool"}


def merge(shard_dirs: list[str], out: str, overwrite: bool = False, progress: bool = True) -> Path:
    """Merge shard indexes into ``out``; ``out`` may not be (or hold, or lie in) a shard."""
    configs = [_shard_config(d) for d in shard_dirs]
    _check_shards(shard_dirs, configs)
    cfg = IndexConfig.from_dict({**configs[0].to_dict(), "shard": "0/1", "out": out, "overwrite": overwrite})
    with claimed_out_dir(out, resume=False, overwrite=overwrite, inputs=shard_dirs) as folder:
        with failed_writes_explained(folder, "merge"):
            return _merge(shard_dirs, cfg, folder, progress)


def _merge(shard_dirs: list[str], cfg: IndexConfig, folder: Path, progress: bool) -> Path:
    from indexer.run.checkpoint import load_state_file
    from indexer.run.engine import Run

    run = Run.open(cfg, folder)
    merged = None
    for shard_dir in shard_dirs:
        recorders, _ = load_state_file(Path(shard_dir) / FINAL_STATE, run.plan, run.device)
        if merged is None:
            merged = recorders
        else:
            for site, rec in merged.items():
                rec.merge(recorders[site])
        manifest = read_manifest(shard_dir)
        counts = manifest["counts"]
        run.tokens_done += counts["tokens"]
        run.position += counts["contexts"]
        run.seconds += manifest["timing"]["stream_seconds"]
        if not run.contexts.counters:  # every shard read the whole stream: the same documents
            run.contexts.counters = {c["name"]: CorpusCounters.from_dict(c) for c in manifest["corpora"]}
        for corpus in manifest["corpora"]:
            run.corpus_tokens[corpus["name"]] = run.corpus_tokens.get(corpus["name"], 0) + corpus["tokens"]
    # The batches a single run makes of the same contexts (shards batch their own contexts).
    run.batches_done = math.ceil(run.position / cfg.batch_size)
    run.recorders = merged or {}
    run.store_folders = [Path(d) for d in shard_dirs]  # the shards' context stores (kept for this)
    run.notes = {"merged_from": [str(Path(d).resolve()) for d in shard_dirs]}
    return run.finalize(progress)


def _shard_config(shard_dir: str) -> IndexConfig:
    manifest = read_manifest(shard_dir)
    if manifest.get("status") != "complete":
        raise IndexDirError(f"{shard_dir}: the shard's index is not complete (resume it first)")
    if not (Path(shard_dir) / FINAL_STATE).is_file():
        raise IndexDirError(f"{shard_dir}: {FINAL_STATE} is missing, so its recorders cannot be merged")
    return IndexConfig.from_dict(manifest["config"])


def _check_shards(shard_dirs: list[str], configs: list[IndexConfig]) -> None:
    first = {k: v for k, v in configs[0].to_dict().items() if k not in SHARD_FREE}
    for shard_dir, cfg in zip(shard_dirs, configs):
        differ = [k for k, v in cfg.to_dict().items() if k not in SHARD_FREE and first[k] != v]
        if differ:
            raise IndexDirError(f"{shard_dir} was indexed with other options ({', '.join(differ)}) than {shard_dirs[0]}")
    pairs = [cfg.shard for cfg in configs]
    n = pairs[0][1]
    got = sorted(i for i, _ in pairs)
    if any(m != n for _, m in pairs) or got != list(range(n)):
        given = ", ".join(f"{i}/{m}" for i, m in pairs)
        raise IndexDirError(f"shards {given} are not exactly the shards 0..{n - 1} of /{n}")
