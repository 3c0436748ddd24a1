"""`neuroscope index`: the ``Run`` object streams contexts through the model, feeds the
recorders, checkpoints, and finalizes.

The run only loops; what is recorded lives in ``indexer.recorders``, what is written in
``indexer.run.finalize``. There is one pass: quantile bin edges are cut at the end from
fine-bin counts over every token of the run (shards and resumed runs included).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from importlib import metadata
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from indexer.config import IndexConfig, parse_device_map
from indexer.errors import ConfigError, CorpusError, IndexDirError
from indexer.forward.sites import HEAD_METRIC_HELP, HEAD_METRICS, Site, plan_sites
from indexer.forward.devices import input_device, site_devices
from indexer.forward.fast_attention import use_fused_attention
from indexer.forward.expert_sites import attach_experts, experts_manifest
from indexer.forward.sae_sites import is_sae_site, load_saes, plan_with_saes
from indexer.inputs.contexts import ContextStream, batches
from indexer.inputs.corpus import CorpusCounters, CorpusSpec, iter_documents, parse_corpus_spec
from indexer.inputs.models import LoadedModel, load_model
from indexer.inputs.sae import parse_sae_spec
from indexer.recorders import FeatureRecorders, default_backend, hist_edges, warm_up
from indexer.run import allocator
from indexer.run.attention_rows import AttentionRows
from indexer.run.context_store import ContextStore
from indexer.run.checkpoint import load_states, site_salt, state_arrays, write_checkpoint
from indexer.run.outdir import claimed_out_dir
from indexer.run.resume import resume_checkpoint, resumed_config
from indexer.run.safety import POOL_PER_SAMPLE, accelerators, check_memory, failed_writes_explained
from indexer.store.killpoint import kill_point
from indexer.store.manifest import FORMAT_VERSION


def index(cfg: IndexConfig, progress: bool = True) -> Path:
    """Run (or resume) an indexing job and write the finished index into ``cfg.out``.

    The output folder is locked for the whole run (indexer.run.lock); a failed write ends in
    one IndexDirError that says what is kept (indexer.run.safety)."""
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other")
    if not cfg.resume:
        cfg.validate()  # before the output folder is touched
    with claimed_out_dir(cfg.out, cfg.resume, cfg.overwrite) as out:
        checkpoint = resume_checkpoint(cfg) if cfg.resume else None
        if checkpoint is not None:
            cfg = resumed_config(cfg, checkpoint)
        cfg.validate()
        if cfg.dask:
            raise ConfigError("--dask jobs run through indexer.scaleout.job.index_on_dask (as `neuroscope index --dask` does)")
        with failed_writes_explained(out, "indexing"):
            run = Run.open(cfg, out)
            run.size_memory(quiet=not progress)
            if checkpoint is not None:
                run.restore(checkpoint)
            else:
                run.start()
            run.stream(progress)
            kill_point("finalize")
            return run.finalize(progress)


class Run:
    """One indexing run: its config, model, plan and stream, and the progress it owns.

    Attributes:
        position: contexts of this shard consumed so far.
        tokens_done, batches_done, seconds: progress of the streaming pass.
        corpus_tokens: text tokens indexed per corpus name.
        recorders: one ``FeatureRecorders`` per planned site.
        notes: extra manifest entries (e.g. the shards a merged run came from).
    """

    def __init__(self, cfg: IndexConfig, out: Path, model: LoadedModel, plan: list[Site], ctx_len: int,
                 device: str, stream: ContextStream):
        self.cfg, self.out, self.model, self.plan = cfg, out, model, plan
        self.ctx_len, self.device, self.contexts = ctx_len, device, stream
        self.site_device = site_devices(model.bridge, plan, device)  # a split model: each layer's own
        self.position = 0
        self.tokens_done = 0
        self.batches_done = 0
        self.seconds = 0.0
        self.corpus_tokens: dict[str, int] = {}
        self.notes: dict[str, Any] = {}
        self.finalize_phases: dict[str, float] = {}  # seconds per finalize phase, set by finalize
        self.recorders: dict[Site, FeatureRecorders] = {}
        # The context store (indexer.run.context_store): its committed lengths, the open
        # writer while streaming, and the folders whose stores hold this run's contexts
        # (None: finalize reads the corpus again, e.g. a Dask job whose shard stores are gone).
        self.store_committed: dict[str, int] = {"contexts": 0, "tokens": 0}
        self.store: ContextStore | None = None
        self.store_folders: list[Path] | None = None
        self.finalize_forward_contexts: int | None = None  # contexts finalize ran the model over
        self.window_forward_contexts: int | None = None  # of those, contexts of samples without a captured window
        self.attention_contexts: int | None = None  # of those, contexts run for head_attention rows
        self.attention_rows = AttentionRows()  # head examples' attention rows, cut while streaming
        self.checkpoint_current = False  # checkpoint.npz holds exactly the recorders' state now
        self.pool_per_sample = POOL_PER_SAMPLE  # sample-window pool entries per sample (safety.choose_pool)

    @classmethod
    def open(cls, cfg: IndexConfig, out: Path) -> "Run":
        """Load the model and corpora of a run and check them against the config."""
        from indexer.forward.runner import resolve_device

        device = resolve_device(cfg.device)
        specs = [parse_corpus_spec(c) for c in cfg.corpus]
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"two corpora share a name ({', '.join(names)}); label them NAME=SPEC")
        for spec in specs:
            _prescan(spec, cfg.skip_bad_records)
        saes = load_saes([parse_sae_spec(s) for s in cfg.sae], device)  # a bad SAE fails before the model loads
        model = load_model(cfg.model, device=device, device_map=parse_device_map(cfg.device_map) if cfg.device_map else None,
                           dtype=cfg.dtype)
        if cfg.device_map:  # split over devices: batches go where the embedding is, recorders to their layer's
            device = input_device(model.bridge, device)
        ctx_len = _ctx_len(cfg, model)
        plan = plan_with_saes(model, attach_experts(model, plan_sites(model.info, cfg.sites, cfg.layers)), saes)
        use_fused_attention(model.bridge, plan)  # where no site reads the pattern: SDPA, not the bridge's rebuild
        stream = ContextStream(
            specs, model.tokenizer, model.info.bos_token_id, ctx_len, cfg.tokens, cfg.skip_bad_records, cfg.shard,
            **stream_options(cfg, model),
        )
        return cls(cfg, out, model, plan, ctx_len, device, stream)

    def size_memory(self, quiet: bool = False) -> dict[str, Any]:
        """The memory estimate (printed unless ``quiet``; ConfigError past the memory available,
        or past an accelerator's free memory for the recorders on it) and the sample-window
        pool it chooses for fresh recorders (a resumed run keeps its checkpoint's)."""
        plan, n_heads = self.plan, self.model.info.n_heads
        estimate = check_memory(
            self.cfg, sum(s.n_features for s in plan), self.ctx_len, quiet=quiet,
            largest_site=max((s.n_features for s in plan), default=0),
            model_bytes=sum(p.numel() * p.element_size() for p in self.model.bridge.parameters()),
            heads=n_heads if any(s.name == "heads" for s in plan) else 0, on_cpu=set(self.site_device.values()) <= {"cpu"},
            devices=accelerators([(self.site_device[s], s.n_features, n_heads * (s.name == "heads")) for s in plan]))
        self.pool_per_sample = estimate["pool_per_sample"]
        return estimate

    # --- starting points -------------------------------------------------------------------

    def start(self) -> None:
        """Fresh recorders. Quantile bins need no warm-up: their edges are cut at the end from
        fine-bin counts over every token (``indexer.recorders.quantiles``)."""
        self.recorders = self.new_recorders()

    def new_recorders(self) -> dict[Site, FeatureRecorders]:
        cfg = self.cfg
        return {
            site: FeatureRecorders.create(site.n_features, cfg.quantiles, cfg.top_k, cfg.per_bin,
                                          site_salt(cfg.seed, site), default_backend(self.site_device[site]),
                                          self.site_device[site],
                                          window=(cfg.window_before, cfg.window_after), max_len=self.ctx_len,
                                          pool_per_sample=self.pool_per_sample)
            for site in self.plan
        }

    def sae_hashes(self) -> dict[str, str]:
        """site -> sha256 of the weights of each SAE site."""
        return {s.name: s.encoder.sae.sha256 for s in self.plan if hasattr(s.encoder, "sae")}

    def restore(self, checkpoint: bytes) -> None:
        """Recorders and progress from a checkpoint's bytes."""
        self.recorders, extra = load_states(checkpoint, self.plan, self.site_device)
        saved = extra.get("saes") or {}
        changed = sorted(name for name, sha in self.sae_hashes().items() if saved.get(name, sha) != sha)
        if changed:
            raise ConfigError(f"--resume: the weights of {', '.join(changed)} changed since the checkpoint (their "
                              "sha256 differs): resume with the SAE the run started with, or index again")
        progress = extra["progress"]
        self.position = progress["position"]
        self.tokens_done = progress["tokens_done"]
        self.batches_done = progress["batches_done"]
        self.seconds = progress["seconds"]
        self.corpus_tokens = progress["corpus_tokens"]
        if "store" not in progress:
            raise IndexDirError("--resume: the checkpoint has no context store (written by an older neuroscope); "
                                "start again with --overwrite")
        self.store_committed = progress["store"]

    def reset(self) -> None:
        """Back to an empty stream position with empty recorders (bench)."""
        self.position = self.tokens_done = self.batches_done = 0
        self.seconds = 0.0
        self.corpus_tokens = {}
        self.store_committed = {"contexts": 0, "tokens": 0}
        self.recorders = self.new_recorders()
        self.attention_rows = AttentionRows()
        self.checkpoint_current = False

    # --- the streaming pass ----------------------------------------------------------------

    def stream(self, progress: bool = True) -> None:
        """Feed every remaining context of the shard to the recorders, checkpointing as it goes."""
        from tqdm import tqdm

        from indexer.forward.runner import SiteForward

        if default_backend(self.device) == "numba":
            warm_up()  # compile or load the kernels now, not inside the first batches
        forward = SiteForward(self.model, self.plan, self.cfg.dtype)
        if progress:
            print(self.memory_line(), file=sys.stderr)
        bar = tqdm(
            total=self.expected_tokens(), initial=self.tokens_done, unit="tok", unit_scale=True, dynamic_ncols=True,
            disable=not progress, file=sys.stderr, desc="indexing", smoothing=0.05,
        )
        contexts = islice(self.contexts.contexts(), self.position, None)
        self.store = ContextStore(self.out, [s.name for s in self.contexts.specs], self.model.info.d_vocab,
                                  self.store_committed)
        self.store_folders = [self.out]
        try:
            with allocator.reuse():  # the forward's large tensors reuse freed memory (allocator.py)
                self._stream_batches(contexts, forward, bar)
        finally:
            self.store.close()
            self.store = None

    def _stream_batches(self, contexts, forward, bar) -> None:
        from indexer.forward.runner import make_batch

        started = time.perf_counter() - self.seconds
        last_checkpoint = time.perf_counter()
        for group in batches(contexts, self.cfg.batch_size):
            batch = make_batch(group, self.model.info.bos_token_id, self.device, self.ctx_len)
            self.checkpoint_current = False
            forward(batch, each=self._recorder_for(batch))  # each site is folded inside the pass
            allocator.release()
            self.store.append(group)
            self.position += len(group)
            self.tokens_done += batch.n_text_tokens
            for ctx in group:
                self.corpus_tokens[ctx.corpus] = self.corpus_tokens.get(ctx.corpus, 0) + ctx.n_text_tokens
            self.batches_done += 1
            self.seconds = time.perf_counter() - started
            bar.update(batch.n_text_tokens)
            kill_point("batch")
            if (self.batches_done % self.cfg.checkpoint_every == 0
                    or time.perf_counter() - last_checkpoint >= 60 * self.cfg.checkpoint_minutes):
                self.checkpoint()
                last_checkpoint = time.perf_counter()
        bar.close()
        self.attention_rows.flush()
        if self.tokens_done == 0:
            raise CorpusError(f"nothing to index: {what_was_read(self.contexts)}")
        self.checkpoint()

    def _recorder_for(self, batch):
        """The per-site step of the streaming pass: fold the site's features into its
        recorders and, for a heads site, cut its new entries' attention rows from the pattern."""
        ctx_ids = np.array([c.ctx_id for c in batch.contexts], np.int64)

        def record(site: Site, features, pattern) -> None:
            rec = self.recorders[site]
            rec.update(features, batch.lengths, batch.ctx_ids, skip_zeros=is_sae_site(site.name),
                       n_tokens=batch.n_text_tokens)  # counted on the host: no device sync
            if pattern is not None:
                self.attention_rows.capture(site, rec, ctx_ids, pattern, self.recorders, batch.ctx_ids)

        return record

    def memory_line(self) -> str:
        """One line: recorder state per feature and in all, per device (flat: it does not grow
        with the corpus)."""
        by_device: dict[str, int] = {}
        for site, rec in self.recorders.items():
            by_device[self.site_device[site]] = by_device.get(self.site_device[site], 0) + rec.nbytes()
        n_bytes = sum(by_device.values())
        n_feat = sum(site.n_features for site in self.plan)
        where = ", ".join(f"{b / 2**20:.0f} MB on {d}" for d, b in by_device.items())
        return f"recorder state: {n_bytes / max(1, n_feat) / 1024:.0f} KB per feature, {n_feat} features: {where}"

    def expected_tokens(self) -> int | None:
        if self.cfg.tokens is None:
            return None
        _, n = self.cfg.shard
        return self.cfg.tokens // n if n > 1 else self.cfg.tokens

    def checkpoint(self) -> None:
        """Write the recorder states and the stream position atomically to ``checkpoint.npz``."""
        progress = {
            "position": self.position, "tokens_done": self.tokens_done,
            "batches_done": self.batches_done, "seconds": self.seconds, "corpus_tokens": self.corpus_tokens,
        }
        extra = {"config": self.cfg.to_dict(), "progress": progress, "format_version": FORMAT_VERSION,
                 "saes": self.sae_hashes()}
        try:
            if self.store is not None:
                self.store_committed = self.store.commit()  # durable before the checkpoint counts it
            progress["store"] = self.store_committed
            write_checkpoint(self.out, state_arrays(self.recorders, extra))
            self.checkpoint_current = True
        except OSError as e:
            raise IndexDirError(
                f"cannot write a checkpoint in {self.out} ({e.strerror or e}); the last good checkpoint is kept: "
                "free space or fix the folder, then rerun with --resume"
            ) from None

    # --- the end ---------------------------------------------------------------------------

    def finalize(self, progress: bool = True) -> Path:
        """Write every table of the index and the manifest (last)."""
        from indexer.run.finalize import write_index

        return write_index(self, progress)

    def manifest(self, finalize_seconds: float) -> dict[str, Any]:
        """What the index holds and how it was made."""
        counters = self.contexts.counters
        corpora = [
            {"name": spec.name, "spec": str(spec), "tokens": self.corpus_tokens.get(spec.name, 0),
             **counters.get(spec.name, CorpusCounters()).to_dict()}
            for spec in self.contexts.specs
        ]
        return {
            "format": "neuroscope-index",
            "format_version": FORMAT_VERSION,
            "status": "complete",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": self.model.info.to_dict(),
            "corpora": corpora,
            "config": self.cfg.to_dict(),
            "ctx_len": self.ctx_len,
            "device": self.device,
            "sites": [{"name": s.name, "layer": s.layer, "n_features": s.n_features} for s in self.plan],
            "saes": [s.encoder.sae.manifest_entry() for s in self.plan if hasattr(s.encoder, "sae")],
            "experts": experts_manifest(self.plan),
            "head_metrics": {name: HEAD_METRIC_HELP[name] for name in HEAD_METRICS},
            "quantiles": list(self.cfg.quantiles),
            "hist_edges": hist_edges().tolist(),
            "counts": {"tokens": self.tokens_done, "contexts": self.position, "batches": self.batches_done},
            "timing": {
                "stream_seconds": round(self.seconds, 3),
                "finalize_seconds": round(finalize_seconds, 3),
                "finalize_phases_s": self.finalize_phases,
                # contexts finalize ran the model over, once each (depends on batch timing, like
                # the seconds): those of samples whose window the stream's pool missed, and those
                # of head examples whose attention row the stream did not cut
                "finalize_forward_contexts": self.finalize_forward_contexts,
                "window_forward_contexts": self.window_forward_contexts,
                "attention_forward_contexts": self.attention_contexts,
                # the sample-window pool's entries per feature (--window-pool; auto: from the memory)
                "window_pool_entries": max((r.windows.pool for r in self.recorders.values()), default=0),
                "tokens_per_second": round(self.tokens_done / self.seconds, 1) if self.seconds else None,
            },
            "versions": versions(),
            **self.notes,
        }


def stream_options(cfg: IndexConfig, model: LoadedModel) -> dict[str, Any]:
    """How a run reads its corpora: document order, its seed, pre-tokenized rows' BOS."""
    return {"order": cfg.order, "seed": cfg.seed, "tokens_bos": cfg.tokens_bos, "vocab_size": model.info.d_vocab}


def versions() -> dict[str, str]:
    found = {}
    for package in ("neuroscope", "torch", "transformer-lens", "transformers", "numba", "pyarrow", "duckdb"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


def what_was_read(stream: ContextStream) -> str:
    """Why a stream gave no tokens, per corpus: e.g. 'code: 0 documents (3 empty, 2 bad records skipped)'."""
    parts = []
    for spec in stream.specs:
        c = stream.counters.get(spec.name, CorpusCounters())
        parts.append(f"{spec.name}: {c.documents} documents with text ({c.empty_documents} empty or blank, "
                     f"{c.bad_records} bad records skipped)")
    return "; ".join(parts)


def _ctx_len(cfg: IndexConfig, model: LoadedModel) -> int:
    n_ctx = model.info.n_ctx
    if cfg.ctx_len is None:
        return min(n_ctx, 1024)
    if cfg.ctx_len > n_ctx:
        raise ConfigError(f"--ctx-len {cfg.ctx_len} is larger than the model's context ({n_ctx})")
    if cfg.ctx_len < 2:
        raise ConfigError("--ctx-len must be at least 2 (BOS and one token)")
    return cfg.ctx_len


def _prescan(spec: CorpusSpec, skip_bad_records: bool) -> None:
    """Read a local JSON corpus once up front, so a bad record fails before any compute."""
    if spec.kind == "file" and spec.location.endswith((".jsonl", ".json")):
        for _ in iter_documents(spec, CorpusCounters(), skip_bad_records):
            pass
