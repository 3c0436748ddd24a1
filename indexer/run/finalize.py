"""Finalize a run: write the index tables and manifest from the recorders and the context store.

The streaming pass keeps, per feature, (value, ctx_id, pos) of each example, and for top-k
examples the feature's values over the example's window too; every context's token ids are in
the context store (``indexer.run.context_store``). Here each example gets its window's tokens
from the store, and only the contexts of examples without captured values (the quantile
samples) are run through the model again. The corpus is not read again, unless the run has no
store (a Dask job whose shard folders are gone). The manifest is written last; a single run's
store is deleted after it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from indexer.forward.random_sites import direction_columns
from indexer.forward.sites import HEAD_METRICS, Site
from indexer.recorders import FeatureRecorders, hist_edges
from indexer.recorders.histogram import ZERO_BIN
from indexer.run.checkpoint import FINAL_STATE, checkpoint_as_state, remove_checkpoints, state_arrays, write_state_file
from indexer.run.context_store import StoredContexts, has_store, remove_store
from indexer.run.decode import WindowDecoder, decode_many
from indexer.run.examples import ExampleSet, collect_examples, window_columns
from indexer.run.head_attention import cut_for, missing_rows, write_head_attention
from indexer.store.schema import (
    Contexts, Examples, HeadComposition, HeadExamples, HeadScores, Heads, HeadWiki, Neurons, RandomDirections, Vocab,
)
from indexer.store.writer import IndexWriter

CONTEXT_ROWS_PER_FILE = 8192
WRITE_THREADS = 2  # Parquet files encoded and compressed at once (the examples table in two parts)
# Private switch for tests: ignore the windows captured while streaming and run the model over
# every kept context (the brute-force finalize the captured windows are checked against).
FORWARD_ALL = False


def write_index(run: Any, progress: bool = True) -> Path:
    """Write every table of the index for a run (``indexer.run.engine.Run``) whose streaming
    pass has finished; the manifest last."""
    from tqdm import tqdm

    from indexer.forward.runner import SiteForward, make_batch
    from indexer.inputs.contexts import batches

    started = time.perf_counter()
    writer = IndexWriter(run.out, threads=WRITE_THREADS)
    vocab = vocab_strings(run.model.tokenizer, run.model.info.d_vocab)
    writer.write(Vocab, {"token_id": np.arange(len(vocab), dtype=np.int32), "token_str": vocab})
    before, after = run.cfg.window_before, run.cfg.window_after
    bands = {site: rec.samples.bands() for site, rec in run.recorders.items()}
    window = None if FORWARD_ALL else (before, after)
    sets = [collect_examples(site, rec, bands[site], window) for site, rec in run.recorders.items()]
    if run.cfg.shard[1] == 1:  # a single run keeps no state: half of it only fed the examples
        for rec in run.recorders.values():
            rec.drop_example_state()
    phases = {"examples": time.perf_counter() - started}
    kept = set().union(*(s.ctx_ids() for s in sets)) if sets else set()
    needs = {example_set.site: example_set.uncaptured_ctx_ids() for example_set in sets}
    rerun = set().union(*needs.values())
    run.window_forward_contexts = len(rerun)
    rows_wanted = missing_rows(run, sets)  # head examples' attention rows: cut in the same re-runs
    run.attention_contexts = len(rows_wanted)
    rerun |= set(rows_wanted)
    wanted = None if run.cfg.store_contexts == "all" else kept
    forwards: dict[tuple[Site, ...], Any] = {}  # by the sites a batch of re-runs needs
    contexts = _ContextWriter(writer)
    bar = tqdm(total=len(kept), unit="ctx", desc="finalizing", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    pending: list = []  # contexts to run the model over, a batch at a time

    by_site = {example_set.site: example_set for example_set in sets}

    def run_pending() -> None:
        batch = make_batch(pending, run.model.info.bos_token_id, run.device, run.ctx_len)
        plan = rerun_plan(run.plan, needs, rows_wanted, {c.ctx_id for c in pending})
        if plan not in forwards:
            forwards[plan] = SiteForward(run.model, list(plan), run.cfg.dtype)
        forward = forwards[plan]

        def each(site: Site, features: Any, pattern: Any) -> None:
            by_site[site].fill_values(batch, features, before, after)
            if pattern is not None:
                keys, src, weights, count = cut_for(site, pending, pattern, rows_wanted)
                if keys:
                    run.attention_rows.add(keys, src, weights, count)

        forward(batch, each=each)
        pending.clear()

    for group in batches(_kept_contexts(run, wanted), run.cfg.batch_size):
        contexts.add(group)
        needed = [c for c in group if c.ctx_id in kept]
        bar.update(len(needed))
        for example_set in sets:
            example_set.fill_tokens(needed, before, after)
        for ctx in needed:
            if ctx.ctx_id in rerun:
                pending.append(ctx)
                if len(pending) == run.cfg.batch_size:
                    run_pending()
    if pending:
        run_pending()
    contexts.close()
    bar.close()
    run.finalize_forward_contexts = len(rerun)
    phases["windows"] = time.perf_counter() - started - phases["examples"]
    decoder = WindowDecoder(run.model.tokenizer)
    for (site, rec), example_set in zip(run.recorders.items(), sets):
        _write_site(writer, site, rec, bands[site], example_set, vocab, decoder)
        example_set.release()  # its table holds the windows now: one set's at a time, not every set's twice
    directions = direction_columns(run.plan)
    if directions:
        writer.write(RandomDirections, directions)
    if any(site.name == "heads" for site in run.plan):
        _write_head_scores(writer, run)
        writer.wait()  # head_attention reads the head examples back
        write_head_attention(run, writer, progress)
    writer.wait()
    # A shard keeps its recorder state for `neuroscope merge`; a single run's would serve nothing
    if run.cfg.shard[1] > 1 and not (run.checkpoint_current and checkpoint_as_state(run.out)):
        write_state_file(run.out / FINAL_STATE, state_arrays(run.recorders), point="state-write")
    phases["write"] = time.perf_counter() - started - phases["examples"] - phases["windows"]
    run.finalize_phases = {k: round(v, 3) for k, v in phases.items()}
    writer.write_manifest(run.manifest(finalize_seconds=time.perf_counter() - started))
    writer.close()
    remove_checkpoints(run.out)  # state.npz and the manifest now say it all
    if run.cfg.shard[1] == 1:
        remove_store(run.out)  # the contexts table holds what users query; a shard's store is merge's input
    return run.out


def rerun_plan(plan: list[Site], needs: dict[Site, set[int]], rows_wanted: dict[int, list[tuple[int, int, int]]],
               ctx_ids: set[int]) -> tuple[Site, ...]:
    """The sites a re-run of contexts ``ctx_ids`` must read: those with examples there whose
    window the stream did not capture (``needs``: site -> such ctx_ids), and the heads sites
    of attention rows wanted there. The pass stops after the last of them and skips the other
    sites' hooks; what it computes up to there is what the stream computed (hooks only read)."""
    layers = {layer for c in ctx_ids for layer, _, _ in rows_wanted.get(c, ())}
    return tuple(site for site in plan
                 if needs.get(site, set()) & ctx_ids or (site.name == "heads" and site.layer in layers))


def _kept_contexts(run: Any, wanted: set[int] | None):
    """The run's contexts (only ``wanted`` ids if given), in ctx_id order: from the context
    store(s), or, for a run without one, from the corpus again."""
    folders = run.store_folders
    if folders and all(has_store(f) for f in folders):
        stored = StoredContexts(folders, [s.name for s in run.contexts.specs], run.model.info.d_vocab)
        if len(stored) != run.position:
            from indexer.errors import IndexDirError

            raise IndexDirError(f"the context store holds {len(stored)} contexts but the run streamed "
                                f"{run.position}: it is damaged; index again with --overwrite")
        return stored.contexts(wanted)
    return run.contexts.contexts(wanted=wanted)


def _write_head_scores(writer: IndexWriter, run: Any) -> None:
    from indexer.forward.head_composition import composition_scores
    from indexer.forward.head_scores import head_wiki

    layers = [s.layer for s in run.plan if s.name == "heads"]
    wiki = head_wiki(run.model, layers)  # the head scores' columns too: one pass over the probe
    writer.write(HeadScores, {name: wiki[name] for name in HeadScores.schema().names})
    writer.write(HeadWiki, wiki)
    if len(layers) > 1:
        writer.write(HeadComposition, composition_scores(run.model.bridge, layers))


def _write_site(writer: IndexWriter, site: Site, rec: FeatureRecorders, bands: dict[str, np.ndarray],
                examples: ExampleSet, vocab: np.ndarray, decoder: WindowDecoder) -> None:
    stats = rec.stats.summary()
    n = site.n_features
    feature = np.arange(n, dtype=np.int32)
    stat_columns = {
        "n_tokens": stats["n_tokens"], "mean": stats["mean"], "std": stats["std"],
        "min": stats["min"], "max": stats["max"], "frac_active": stats["frac_active"],
        "hist": list(_histogram(rec, stats["n_tokens"], bands)),
        "quantile_edges": list(bands["edges"].astype(np.float32)),
        "bin_counts": list(bands["counts"]),
        "hist_edges": [hist_edges().astype(np.float32)] * n,
        "quantiles": [rec.samples.quantiles.astype(np.float32)] * n,
        "bin_shares": list(bands["shares"]),
        "bin_status": bands["status"],
    }
    rows = window_columns(examples, vocab, decoder)
    if site.name == "heads":
        key = {"layer": np.full(n, site.layer, np.int32), "head": feature // len(HEAD_METRICS),
               "metric": np.array(HEAD_METRICS)[feature % len(HEAD_METRICS)]}
        writer.write_soon(Heads, {**key, **stat_columns}, partition={"layer": site.layer})
        f = rows.pop("feature")
        ex_key = {"layer": np.full(len(f), site.layer, np.int32), "head": (f // len(HEAD_METRICS)).astype(np.int32),
                  "metric": np.array(HEAD_METRICS)[f % len(HEAD_METRICS)]}
        writer.write_soon(HeadExamples, {**ex_key, **rows}, partition={"layer": site.layer}, parts=WRITE_THREADS)
        return
    key = {"site": np.full(n, site.name), "layer": np.full(n, site.layer, np.int32), "neuron": feature}
    writer.write_soon(Neurons, {**key, **stat_columns}, partition={"site": site.name, "layer": site.layer})
    f = rows.pop("feature")
    ex_key = {"site": np.full(len(f), site.name), "layer": np.full(len(f), site.layer, np.int32),
              "neuron": f.astype(np.int32)}
    writer.write_soon(Examples, {**ex_key, **rows}, partition={"site": site.name, "layer": site.layer},
                      parts=WRITE_THREADS)


class _ContextWriter:
    """Writes the contexts table in part files of bounded size, per corpus."""

    def __init__(self, writer: IndexWriter):
        self.writer = writer
        self.pending: dict[str, list] = {}
        self.parts: dict[str, int] = {}

    def add(self, contexts: list) -> None:
        for ctx in contexts:
            rows = self.pending.setdefault(ctx.corpus, [])
            rows.append(ctx)
            if len(rows) >= CONTEXT_ROWS_PER_FILE:
                self._flush(ctx.corpus)

    def close(self) -> None:
        for corpus in list(self.pending):
            self._flush(corpus)

    def _flush(self, corpus: str) -> None:
        rows = self.pending.pop(corpus, [])
        if not rows:
            return
        part = self.parts.get(corpus, 0)
        self.parts[corpus] = part + 1
        columns = {
            "ctx_id": np.array([c.ctx_id for c in rows], np.int64),
            "corpus": [corpus] * len(rows),
            "doc_id": np.array([c.doc_id for c in rows], np.int64),
            "token_ids": [c.token_ids for c in rows],
            "n_tokens": np.array([len(c.token_ids) for c in rows], np.int32),
        }
        self.writer.write(Contexts, columns, partition={"corpus": corpus}, part=f"part-{part:05d}")


def vocab_strings(tokenizer: Any, d_vocab: int) -> np.ndarray:
    """Each token id decoded on its own (the model's vocab may exceed the tokenizer's)."""
    n = min(d_vocab, len(tokenizer))
    strings = decode_many(tokenizer, [[i] for i in range(n)], skip_special_tokens=False)
    strings += [f"<unused {i}>" for i in range(n, d_vocab)]
    return np.array(strings, dtype=object)


def _histogram(rec: FeatureRecorders, n_tokens: np.ndarray, bands: dict[str, np.ndarray]) -> np.ndarray:
    """The histogram of every token a feature saw: the fine counts', plus in the zero bin the
    zeros a sparse site (SAE latents) counted but did not bin (``FeatureRecorders.update``;
    the bands partition the binned tokens)."""
    hist = rec.samples.histogram()
    hist[:, ZERO_BIN] += n_tokens - bands["counts"].sum(axis=1)
    return hist

