"""`neuroscope replay DIR --model [LABEL=]SPEC [--model ...] --out DIR2`: an index's examples
re-run through other checkpoints of its model (fine-tuned, or earlier in training).

The same contexts (from the index's context store: the ``contexts`` table), the same features
(every neuron site of the index: MLP neurons, SAE latents with the index's SAE, random
directions), through each model in turn, which must have the index's shape and tokenizer.
Per checkpoint, ``replay_examples`` holds every top and quantile example's activation in the
index and under the checkpoint (top examples: with the checkpoint's values over their window),
and ``replay_features`` per feature the rank correlation, the top-example ratio, the
checkpoint's own max on those contexts and a ``changed`` flag (indexer.run.replay_stats). One
row per (feature, checkpoint) in the order given is the feature's trajectory.

DIR2 is an index folder the viewer, ``neuroscope sql`` and ``Index.open`` read: its manifest
(``"kind": "replay"``, the source and the checkpoints), the vocabulary, the contexts used and
the two tables, one partition per checkpoint. It says "partial" until every checkpoint is
done. Resumable: a finished checkpoint is not run again (``analyses/_done/replay-LABEL.json``),
an unfinished one resumes at its last saved chunk of contexts; running again with more models
adds them; a checkpoint no longer listed is dropped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from indexer.errors import ConfigError, IndexDirError, ModelSpecError
from indexer.forward.manifest_plan import neuron_sites, plan_from_manifest
from indexer.inputs.models import load_model
from indexer.run import replay_stats
from indexer.run.outdir import claimed_out_dir, meaningful_entries
from indexer.run.replay_forward import ExampleRows, Shape, run_checkpoint
from indexer.run.safety import failed_writes_explained
from indexer.store.manifest import FORMAT_VERSION, MANIFEST, read_manifest
from indexer.store.query import open_index, run_sql
from indexer.store.schema import Contexts, ReplayExamples, ReplayFeatures, Vocab
from indexer.store.table import valid_partition_value
from indexer.store.writer import IndexWriter, atomic_write_bytes

KIND = "replay"
SHAPE = ("n_layers", "d_model", "d_mlp", "n_heads", "d_head", "d_vocab", "n_experts")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


@dataclass(frozen=True)
class Checkpoint:
    """One model to replay through: its label (a partition value) and its model spec."""

    label: str
    spec: str


def parse_checkpoints(specs: list[str]) -> list[Checkpoint]:
    """``[LABEL=]SPEC`` each; without a label, the spec's last path part (unsafe characters as _).

    >>> parse_checkpoints(["runs/ckpt-100", "final=runs/last"])
    [Checkpoint(label='ckpt-100', spec='runs/ckpt-100'), Checkpoint(label='final', spec='runs/last')]
    """
    if not specs:
        raise ConfigError("replay: give at least one --model [LABEL=]SPEC")
    out = []
    for text in specs:
        label, sep, spec = text.partition("=")
        if not sep or not label or "/" in label:
            label, spec = _UNSAFE.sub("_", Path(text.rstrip("/")).name) or "model", text
        if not spec or not valid_partition_value(label):
            raise ConfigError(f"--model {text!r}: expected [LABEL=]SPEC with a label of letters, digits and _.+-")
        out.append(Checkpoint(label, spec))
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two --model share a label ({', '.join(labels)}); name them LABEL=SPEC")
    return out


def replay(index_dir: str | Path, models: list[str], out: str | Path, device: str = "auto", dtype: str = "float32",
           overwrite: bool = False, progress: bool = True) -> Path:
    """Replay the examples of ``index_dir`` through ``models`` into ``out``; returns ``out``."""
    source = Path(index_dir)
    manifest = read_manifest(source)
    if manifest.get("status") != "complete" or manifest.get("kind") == KIND:
        raise IndexDirError(f"{source}: not a complete index (a replay replays an index, not a replay or a partial run)")
    checkpoints = parse_checkpoints(models)
    if not neuron_sites(manifest):
        raise IndexDirError(f"{source}: the index has no neuron sites to replay (heads only)")
    for ck in checkpoints:
        _check_config_shape(ck, manifest)
    path = Path(out)
    real, src = os.path.realpath(path), os.path.realpath(source)
    if real == src or real.startswith(src + os.sep) or src.startswith(real + os.sep):
        raise IndexDirError(f"--out {out} is (or holds, or is inside) the index {source}; write to another folder")
    continuing = not overwrite and _replay_of(path, source)
    if not continuing and path.is_dir() and meaningful_entries(path) and not overwrite:
        raise IndexDirError(f"--out {out} is not empty and holds no replay of {source}; use --overwrite to replace "
                            "it, or another folder")
    with claimed_out_dir(str(out), resume=continuing, overwrite=overwrite, inputs=[str(source)]) as folder:
        with failed_writes_explained(folder, "replay"):
            return Replay(source, manifest, checkpoints, folder, device, dtype, progress).run()


class Replay:
    """One replay: the source's examples and contexts, read once, then each checkpoint."""

    def __init__(self, source: Path, manifest: dict[str, Any], checkpoints: list[Checkpoint], folder: Path,
                 device: str, dtype: str, progress: bool):
        from indexer.forward.runner import resolve_device

        self.source, self.manifest, self.checkpoints, self.folder = source, manifest, checkpoints, folder
        self.device, self.progress = resolve_device(device), progress
        conn = open_index(source)
        try:
            self.examples = _sql(conn, """SELECT site, layer, neuron, kind, bin, rank, corpus, ctx_id, pos, token_str,
                activation, CASE WHEN kind = 'top' THEN window_start END AS window_start,
                CASE WHEN kind = 'top' THEN window_token_ids END AS window_token_ids
                FROM examples ORDER BY site, layer, neuron, kind, bin, rank""")
            ids = sorted(set(self.examples.ctx_id.tolist()))
            self.context_rows = _sql(conn, "SELECT * FROM contexts WHERE ctx_id IN (SELECT unnest($ids))", {"ids": ids})
            self.vocab = _sql(conn, "SELECT token_id, token_str FROM vocab ORDER BY token_id")
            stored = _sql(conn, "SELECT layer, neuron, direction FROM random_directions ORDER BY layer, neuron")
        finally:
            conn.close()
        self.contexts = {int(c): np.asarray(t, np.int64) for c, t in zip(self.context_rows.ctx_id, self.context_rows.token_ids)}
        missing = sorted(set(ids) - set(self.contexts))
        if missing:
            raise IndexDirError(f"{source}: the contexts table lacks {len(missing)} contexts of its examples (e.g. "
                                f"{missing[0]}); replay needs every example's context")
        self.random = {int(layer): np.stack([np.asarray(d, np.float32) for d in g.direction])
                       for layer, g in stored.groupby("layer")}
        cfg = manifest.get("config", {})
        self.shape = Shape(int(manifest.get("ctx_len") or 0), int(cfg.get("batch_size") or 8),
                           int(manifest["model"].get("bos_token_id", 0)), dtype)
        self.writer = IndexWriter(folder)

    def run(self) -> Path:
        self._forget_unlisted()
        if not Vocab.files(self.folder):  # the contexts the examples sit in, and the vocabulary, as the source has them
            for corpus, g in self.context_rows.groupby("corpus"):
                self.writer.write(Contexts, {c: g[c].tolist() for c in Contexts.columns() if c != "corpus"},
                                  partition={"corpus": corpus})
            self.writer.write(Vocab, {c: self.vocab[c].tolist() for c in Vocab.columns()})
        self._write_manifest("partial")
        for step, ck in enumerate(self.checkpoints):
            if _done_spec(self.folder, ck) == ck.spec:
                continue
            started = time.perf_counter()
            self._checkpoint(step, ck)
            atomic_write_bytes(_marker(self.folder, ck), json.dumps(
                {"spec": ck.spec, "seconds": round(time.perf_counter() - started, 2)}).encode())
            shutil.rmtree(self._partial(ck), ignore_errors=True)
            self._write_manifest("partial")
        self._write_manifest("complete")
        with contextlib.suppress(OSError):
            (self.folder / "analyses" / "_partial").rmdir()  # only if empty
        return self.folder

    def _checkpoint(self, step: int, ck: Checkpoint) -> None:
        from tqdm import tqdm

        model = load_model(ck.spec, device=self.device)
        self._check_model(ck, model)
        plan = plan_from_manifest(model, self.manifest, random_directions=self.random)
        index = {(s.name, s.layer): k for k, s in enumerate(plan)}
        ex = self.examples
        lengths = np.array([len(w) if w is not None else 0 for w in ex.window_token_ids], np.int64)
        rows = ExampleRows(site=np.array([index[(s, int(l))] for s, l in zip(ex.site, ex.layer)], np.int64),
                           neuron=ex.neuron.to_numpy(np.int64), ctx_id=ex.ctx_id.to_numpy(np.int64),
                           pos=ex.pos.to_numpy(np.int64), window_start=ex.window_start.fillna(0).to_numpy(np.int64),
                           window_len=lengths)
        bar = tqdm(total=len(self.contexts), unit="ctx", desc=f"replay {ck.label}", disable=not self.progress,
                   file=sys.stderr, dynamic_ncols=True)
        got = run_checkpoint(model, plan, rows, self.contexts, self.shape, self._partial(ck), ck.spec, bar)
        bar.close()
        frame = ex[["site", "layer", "neuron", "kind", "activation", "ctx_id"]].assign(
            new=got["new"], ctx_max=got["ctx_max"], ctx_argmax=got["ctx_argmax"])
        vocab = self.vocab.token_str.to_numpy(object)
        part = {"checkpoint": ck.label}
        features = replay_stats.feature_columns(frame, vocab, self.contexts)
        self.writer.write(ReplayFeatures, {**features, "step": step}, partition=part)
        windows = [got["window"][i, :n].tolist() if n else None for i, n in enumerate(lengths)]
        starts = [int(w) if n else None for w, n in zip(rows.window_start, lengths)]
        self.writer.write(ReplayExamples, {**{c: ex[c].tolist() for c in ex.columns}, "window_start": starts,
                                           "new_activation": got["new"], "window_acts": windows, "step": step},
                          partition=part)

    def _check_model(self, ck: Checkpoint, model: Any) -> None:
        """ConfigError (one line) for a model of another shape or tokenizer than the index's."""
        from indexer.run.finalize import vocab_strings

        _same_shape(ck, model.info.to_dict(), self.manifest["model"])
        theirs = vocab_strings(model.tokenizer, model.info.d_vocab)
        ours = self.vocab.token_str.to_numpy(object)
        differ = np.flatnonzero(theirs[: len(ours)] != ours) if len(theirs) >= len(ours) else [len(theirs)]
        if len(differ):
            i = int(differ[0])
            raise ConfigError(f"--model {ck.spec}: its tokenizer is not the index's (token {i}: "
                              f"{theirs[i] if i < len(theirs) else None!r} against {ours[i]!r}); replay needs the same "
                              "tokenizer")

    def _partial(self, ck: Checkpoint) -> Path:
        return self.folder / "analyses" / "_partial" / f"{KIND}-{ck.label}"

    def _forget_unlisted(self) -> None:
        """Drop the tables and markers of checkpoints this call does not list (or lists with another spec)."""
        listed = {ck.label: ck.spec for ck in self.checkpoints}
        for table in (ReplayFeatures, ReplayExamples):
            for folder in (self.folder / table.LOCATION).glob("checkpoint=*"):
                label = folder.name.split("=", 1)[1]
                if label not in listed or _done_spec(self.folder, Checkpoint(label, "")) != listed[label]:
                    shutil.rmtree(folder)
        for marker in (self.folder / "analyses" / "_done").glob(f"{KIND}-*.json"):
            label = marker.stem[len(KIND) + 1:]
            if label not in listed or json.loads(marker.read_text()).get("spec") != listed[label]:
                marker.unlink()

    def _write_manifest(self, status: str) -> None:
        from indexer.run.engine import versions

        m = self.manifest
        done = {ck.label: _done_spec(self.folder, ck) == ck.spec for ck in self.checkpoints}
        self.writer.write_manifest({
            "format": "neuroscope-index", "format_version": FORMAT_VERSION, "status": status, "kind": KIND,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": m["model"], "corpora": m.get("corpora", []), "config": m.get("config", {}),
            "ctx_len": m.get("ctx_len"), "sites": neuron_sites(m), "saes": m.get("saes", []),
            "quantiles": m.get("quantiles"), "hist_edges": m.get("hist_edges"),
            "replay": {"source": str(self.source.resolve()), "examples": len(self.examples),
                       "contexts": len(self.contexts),
                       "checkpoints": [{"label": ck.label, "spec": ck.spec, "step": i, "done": done[ck.label]}
                                       for i, ck in enumerate(self.checkpoints)],
                       "changed_if": {"rank_correlation_below": replay_stats.CHANGED_CORRELATION,
                                      "top_ratio_outside": [1 / replay_stats.CHANGED_RATIO, replay_stats.CHANGED_RATIO]}},
            "versions": versions(),
        })


def _sql(conn: Any, query: str, params: Any = None) -> pd.DataFrame:
    return run_sql(conn, query, params=params, limit=None, timeout_s=None)[0]


def _marker(folder: Path, ck: Checkpoint) -> Path:
    return folder / "analyses" / "_done" / f"{KIND}-{ck.label}.json"


def _done_spec(folder: Path, ck: Checkpoint) -> str | None:
    """The spec a finished checkpoint of this label was run with (None: not finished)."""
    try:
        return json.loads(_marker(folder, ck).read_text()).get("spec")
    except (OSError, ValueError):
        return None


def _replay_of(path: Path, source: Path) -> bool:
    """Whether ``path`` holds a replay (finished or not) of the index ``source``."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    replay = manifest.get("replay") if isinstance(manifest, dict) else None
    return isinstance(replay, dict) and replay.get("source") == str(source.resolve())


def _same_shape(ck: Checkpoint, theirs: dict[str, Any], ours: dict[str, Any]) -> None:
    differ = [f"{k} {theirs.get(k)} (the index's: {ours.get(k)})" for k in SHAPE
              if k in ours and theirs.get(k) is not None and theirs.get(k) != ours.get(k)]
    if differ:
        raise ConfigError(f"--model {ck.spec}: not the shape of the index's model {ours.get('name')}: "
                          f"{', '.join(differ)}; replay needs a checkpoint of the same model")


def _check_config_shape(ck: Checkpoint, manifest: dict[str, Any]) -> None:
    """The shape check from the model's config alone, before any weights load (skipped when
    the spec has no config to read: then it is checked once loaded)."""
    from indexer.run.dry_run import info_from_config

    try:
        info = info_from_config(ck.spec)
    except (ModelSpecError, OSError, KeyError, TypeError):
        return
    _same_shape(ck, info.to_dict(), manifest["model"])
