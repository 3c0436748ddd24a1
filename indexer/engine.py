"""`neuroscope index`: stream contexts through the model, feed the recorders, checkpoint, finalize.

The engine only loops; what is recorded lives in ``indexer.recorders``, what is written in
``indexer.finalize``. Quantile edges are estimated once, before the main pass, from the first
``warmup_tokens`` tokens of the whole (unsharded) stream, so every shard bins with the same
edges and shards merge exactly.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from indexer.config import IndexConfig
from indexer.contexts import ContextStream, batches
from indexer.corpus import iter_documents, parse_corpus_spec, CorpusCounters
from indexer.errors import ConfigError
from indexer.models import LoadedModel, load_model
from indexer.recorders import default_backend, warm_up
from indexer.recording import SiteRecorders, load_states, save_states
from indexer.rundir import CHECKPOINT, MANIFEST, from_json_array, json_array, prepare_out_dir
from indexer.storage import atomic_write_bytes
from indexer.sites import Site, plan_sites

# Fields that may differ between a run and its resumption.
RESUME_FREE = {"resume", "overwrite", "checkpoint_every", "device"}


@dataclass
class Run:
    """Everything a run needs, resolved from its config."""

    cfg: IndexConfig
    out: Path
    model: LoadedModel
    plan: list[Site]
    ctx_len: int
    device: str
    stream: ContextStream
    position: int = 0  # contexts of this shard consumed so far
    tokens_done: int = 0
    batches_done: int = 0
    seconds: float = 0.0
    corpus_tokens: dict[str, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)  # extra manifest entries
    recorders: list[SiteRecorders] = field(default_factory=list)


def index(cfg: IndexConfig, progress: bool = True) -> Path:
    """Run (or resume) an indexing job and write the finished index into ``cfg.out``."""
    from indexer.finalize import finalize

    checkpoint = _read_checkpoint(cfg) if cfg.resume else None
    if checkpoint is not None:
        cfg = _resumed_config(cfg, checkpoint)
    cfg.validate()
    if cfg.dask:
        raise ConfigError("--dask is not available yet; run shards with --shard I/N and combine them with `neuroscope merge`")
    out = prepare_out_dir(cfg.out, cfg.resume, cfg.overwrite)
    run = open_run(cfg, out)
    if checkpoint is not None:
        _restore(run, checkpoint)
    else:
        run.recorders = new_recorders(run)
    if default_backend(run.device) == "numba":
        warm_up()  # compile or load the kernels now, not inside the first batches
    _stream(run, progress)
    return finalize(run, progress=progress)


def open_run(cfg: IndexConfig, out: Path) -> Run:
    """Load the model and corpora of a run and check them against the config."""
    from indexer.forward import resolve_device

    device = resolve_device(cfg.device)
    specs = [parse_corpus_spec(c) for c in cfg.corpus]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"two corpora share a name ({', '.join(names)}); label them NAME=SPEC")
    for spec in specs:
        _prescan(spec, cfg.skip_bad_records)
    model = load_model(cfg.model, device=device)
    ctx_len = _ctx_len(cfg, model)
    plan = plan_sites(model.info, cfg.sites, cfg.layers)
    stream = ContextStream(
        specs, model.tokenizer, model.info.bos_token_id, ctx_len, cfg.tokens, cfg.skip_bad_records, cfg.shard_pair()
    )
    return Run(cfg=cfg, out=out, model=model, plan=plan, ctx_len=ctx_len, device=device, stream=stream)


def new_recorders(run: Run) -> list[SiteRecorders]:
    edges = estimate_edges(run)
    cfg = run.cfg
    return [
        SiteRecorders.new(site, edges[site], cfg.top_k, cfg.per_bin, cfg.seed, run.device) for site in run.plan
    ]


def estimate_edges(run: Run) -> dict[Site, np.ndarray]:
    """Per-feature quantile edges from the first ``warmup_tokens`` tokens of the global stream."""
    import torch

    from indexer.forward import SiteForward, make_batch
    from indexer.recorders import estimate_edges as quantile_edges

    stream = ContextStream(
        run.stream.specs, run.model.tokenizer, run.model.info.bos_token_id, run.ctx_len,
        run.cfg.tokens, run.cfg.skip_bad_records,
    )
    forward = SiteForward(run.model, run.plan, run.cfg.dtype)
    samples: dict[Site, list] = {site: [] for site in run.plan}
    seen = 0
    for contexts in batches(iter(stream), run.cfg.batch_size):
        batch = make_batch(contexts, run.model.info.bos_token_id, run.device, run.ctx_len)
        for site, acts in forward(batch).items():
            for row, ctx in enumerate(contexts):
                samples[site].append(acts[row, 1 : len(ctx.token_ids)])  # BOS is never recorded
        seen += batch.n_text_tokens
        if seen >= run.cfg.warmup_tokens:
            break
    quantiles = run.cfg.quantile_list()
    # Sorting 4M values at a time bounds the transient memory of the estimate (~100 MB).
    return {
        site: quantile_edges(torch.cat(rows)[: run.cfg.warmup_tokens], quantiles, max_elements=1 << 22).cpu().numpy()
        for site, rows in samples.items()
    }


def _stream(run: Run, progress: bool) -> None:
    from tqdm import tqdm

    from indexer.forward import SiteForward, make_batch

    forward = SiteForward(run.model, run.plan, run.cfg.dtype)
    total = _expected_tokens(run)
    bar = tqdm(
        total=total, initial=run.tokens_done, unit="tok", unit_scale=True, dynamic_ncols=True,
        disable=not progress, file=sys.stderr, desc="indexing", smoothing=0.05,
    )
    contexts = islice(run.stream.contexts(), run.position, None)
    started = time.perf_counter() - run.seconds
    for group in batches(contexts, run.cfg.batch_size):
        batch = make_batch(group, run.model.info.bos_token_id, run.device, run.ctx_len)
        features = forward(batch)
        for rec in run.recorders:
            rec.update(features[rec.site], batch.lengths, batch.ctx_ids)
        run.position += len(group)
        run.tokens_done += batch.n_text_tokens
        for ctx in group:
            run.corpus_tokens[ctx.corpus] = run.corpus_tokens.get(ctx.corpus, 0) + ctx.n_text_tokens
        run.batches_done += 1
        run.seconds = time.perf_counter() - started
        bar.update(batch.n_text_tokens)
        if run.batches_done % run.cfg.checkpoint_every == 0:
            write_checkpoint(run)
    bar.close()
    write_checkpoint(run)


def _expected_tokens(run: Run) -> int | None:
    if run.cfg.tokens is None:
        return None
    _, n = run.cfg.shard_pair()
    return run.cfg.tokens // n if n > 1 else run.cfg.tokens


def write_checkpoint(run: Run) -> None:
    progress = {
        "position": run.position, "tokens_done": run.tokens_done,
        "batches_done": run.batches_done, "seconds": run.seconds, "corpus_tokens": run.corpus_tokens,
    }
    extra = {"config": json_array(run.cfg.to_dict()), "progress": json_array(progress)}
    atomic_write_bytes(run.out / CHECKPOINT, save_states(run.recorders, extra))


def _read_checkpoint(cfg: IndexConfig) -> bytes:
    from indexer.errors import IndexDirError

    path = Path(cfg.out).expanduser() / CHECKPOINT
    if not path.is_file() and (path.parent / MANIFEST).is_file():
        raise IndexDirError(f"--resume: the index in {cfg.out} is already complete; nothing to resume")
    if not path.is_file():
        raise IndexDirError(f"--resume: no checkpoint in {cfg.out} (nothing to resume; drop --resume to start)")
    return path.read_bytes()


def _resumed_config(cfg: IndexConfig, checkpoint: bytes) -> IndexConfig:
    """The checkpoint's config; options given now must agree with it."""
    import io

    with np.load(io.BytesIO(checkpoint)) as npz:
        saved = IndexConfig.from_dict(from_json_array(npz["config"]))
    defaults = IndexConfig().to_dict()
    given = cfg.to_dict()
    clashes = [
        k for k, v in given.items()
        if k not in RESUME_FREE | {"out"} and v != defaults[k] and v != getattr(saved, k)
    ]
    if clashes:
        raise ConfigError(f"--resume: options differ from the checkpointed run: {', '.join(clashes)}")
    for key in RESUME_FREE:
        setattr(saved, key, given[key])
    saved.out = cfg.out
    return saved


def _restore(run: Run, checkpoint: bytes) -> None:
    run.recorders, extra = load_states(checkpoint, run.plan, run.device)
    progress = from_json_array(extra["progress"])
    run.position = progress["position"]
    run.tokens_done = progress["tokens_done"]
    run.batches_done = progress["batches_done"]
    run.seconds = progress["seconds"]
    run.corpus_tokens = progress["corpus_tokens"]


def _ctx_len(cfg: IndexConfig, model: LoadedModel) -> int:
    n_ctx = model.info.n_ctx
    if cfg.ctx_len is None:
        return min(n_ctx, 1024)
    if cfg.ctx_len > n_ctx:
        raise ConfigError(f"--ctx-len {cfg.ctx_len} is larger than the model's context ({n_ctx})")
    if cfg.ctx_len < 2:
        raise ConfigError("--ctx-len must be at least 2 (BOS and one token)")
    return cfg.ctx_len


def _prescan(spec: Any, skip_bad_records: bool) -> None:
    """Read a local JSON corpus once up front, so a bad record fails before any compute."""
    if spec.kind == "file" and spec.location.endswith((".jsonl", ".json")):
        for _ in iter_documents(spec, CorpusCounters(), skip_bad_records):
            pass
