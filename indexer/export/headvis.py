"""Neuronpedia HeadVis (``--format headvis``): the per-head data tree that the HeadVis frontend
(anthropics/headvis) reads and Neuronpedia's ``load-head-metrics.py`` and
``load-head-sequences.py`` import into ``ModelHeadMetrics`` and ``ModelHeadSequence``.

Format version and source: hijohnnylin/neuronpedia
``utils/neuronpedia-utils/neuronpedia_utils/headvis/`` (``compute-head-metrics.py``, its README
and the two loaders, at 171aa951, 2026): ``config.json`` (frontend config with a nested
``pipeline_config``), ``scatter_data.json`` (one row per head), ``server_config.json`` and
``attributions/manifest.json`` (``{}``: static mode), ``heads/L{layer}H{head}.json`` with
``sequences`` (``sequence_id, interval, tokens, attention_indices`` (flat ``q * seq_len + k``),
``attention_values, seq_len, max_activation``), ``qk_distance_histogram``,
``top_query_tokens``, ``top_key_tokens`` (top 50), ``histogram`` and ``statistics``.

Layout: ``OUT/{model id}/headvis/{corpora}/``, as the loaders look for it (``{exports}/{np
model id}/headvis/{dataset}/``); point the frontend's ``data/`` at that folder.

Mapping:
- a head's sequences are the examples of one head metric (``--site heads/METRIC``, default
  ``max_attn``: HeadVis's activation is also a sequence's largest attention off BOS): interval
  b + 1 for quantile bin b, the top interval (bins + 1) for the top examples; ``tokens`` are the
  example's window (BOS kept), extended back to the earliest position its token attends to;
  the attention is the example token's row from ``head_attention`` (weights >= 0.01, at most
  32 sources), so each sequence holds one query row; ``max_activation`` is the metric's value
  at that token and ``sequence_id`` the context id;
- ``qk_distance_histogram``, ``top_query_tokens``, ``top_key_tokens``: computed from those rows
  as ``compute-head-metrics.py`` does (unrounded);
- ``histogram``: the stored histogram of the metric over every token (per token, not per
  sequence; the index's symlog bins, trimmed to the non-empty span);
  ``statistics.mean_max_activation``: the metric's mean over every token;
- scatter: ``self_attention_score``, ``prev_token_score``, ``induction_score``, ``qk_distance``
  (mean attention distance) from ``head_wiki`` (measured on neuroscope's ``[BOS] r r`` probe of
  random tokens, not on the corpus); ``pattern_entropy`` = the mean of the ``entropy`` metric over
  the corpus; ``qk_distance_variance`` is not recorded (null); and ``duplicate_token_score``,
  ``bos_score``, ``successor_score`` from ``head_wiki`` as extra metrics.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from indexer.export import neuronpedia
from indexer.export.files import write_json
from indexer.export.options import ExportOptions
from indexer.export.records import Example, Feature, finite, strings

VERSION = "HeadVis data tree (hijohnnylin/neuronpedia utils/neuronpedia-utils/neuronpedia_utils/headvis @ 171aa951)"
SOURCE = ("https://github.com/hijohnnylin/neuronpedia/blob/main/utils/neuronpedia-utils/neuronpedia_utils/"
          "headvis/compute-head-metrics.py")
QK_DISTANCE_BIN_EDGES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
TOP_TOKENS = 50
SCATTER = {  # HeadVis metric -> (head_wiki column, description); pattern_entropy comes from `heads`
    "self_attention_score": ("self_attention", "Mean attention to the current token, on the [BOS] r r probe."),
    "prev_token_score": ("prev_token", "Mean attention to the previous token, on the [BOS] r r probe."),
    "pattern_entropy": (None, "Mean entropy (nats) of the attention pattern over the corpus."),
    "qk_distance": ("mean_attn_distance", "Mean |q - k| weighted by attention, on the [BOS] r r probe."),
    "qk_distance_variance": (None, "Not recorded by neuroscope (null)."),
    "induction_score": ("induction", "Attention to the token after the current token's earlier copy ([BOS] r r)."),
    "duplicate_token_score": ("duplicate_token", "Attention to the current token's earlier copy ([BOS] r r)."),
    "bos_score": ("bos", "Mean attention to BOS, on the [BOS] r r probe."),
    "successor_score": ("successor", "Successor score: direct OV circuit on ordinal tokens (null if none)."),
}


def run_folder(out: Path, manifest: dict, options: ExportOptions) -> Path:
    corpora = "-".join(str(c.get("name")) for c in manifest.get("corpora") or []) or "corpus"
    dataset = re.sub(r"[^A-Za-z0-9._-]+", "-", corpora.replace("/", "-"))
    return out / neuronpedia.model_id(manifest, options) / "headvis" / dataset


def sequence(e: Example, attention: tuple[list[int], list[float]] | None, prefix: list[int], vocab: list[str],
             interval: int) -> dict[str, Any]:
    """One HeadVis sequence: the window (with ``prefix``, the ids of the positions before it
    that the token attends to) and the example token's attention row as flat COO."""
    e = e.cut(keep_bos=True)
    first = e.start - len(prefix)
    tokens = strings(prefix + e.token_ids, vocab)
    n, q = len(tokens), e.pos - first
    # A source outside the tokens (its context not stored) cannot be placed: dropped.
    row = [(k, w) for k, w in zip(*(attention or ([], []))) if first <= k < first + n]
    return {"sequence_id": e.ctx_id, "interval": interval, "tokens": tokens,
            "attention_indices": [q * n + (k - first) for k, _ in row], "attention_values": [w for _, w in row],
            "seq_len": n, "max_activation": e.activation}


def qk_histogram(sequences: list[dict]) -> dict[str, list]:
    """|q - k| weighted by attention, in HeadVis's log-spaced bins."""
    values = [0.0] * (len(QK_DISTANCE_BIN_EDGES) - 1)
    for s in sequences:
        for flat, w in zip(s["attention_indices"], s["attention_values"]):
            b = bisect.bisect_right(QK_DISTANCE_BIN_EDGES, abs(flat // s["seq_len"] - flat % s["seq_len"])) - 1
            if 0 <= b < len(values):
                values[b] += w
    return {"bin_edges": list(QK_DISTANCE_BIN_EDGES), "bin_values": values}


def top_tokens(sequences: list[dict], side: str) -> list[dict[str, Any]]:
    """Token strings ranked by the attention they send (query) or receive (key)."""
    mass: dict[str, float] = defaultdict(float)
    for s in sequences:
        for flat, w in zip(s["attention_indices"], s["attention_values"]):
            mass[s["tokens"][flat // s["seq_len"] if side == "query" else flat % s["seq_len"]]] += w
    return [{"token": t, "weight": w} for t, w in sorted(mass.items(), key=lambda x: -x[1])[:TOP_TOKENS]]


def head_file(feature: Feature, attention: dict, prefixes: dict, vocab: list[str]) -> dict[str, Any]:
    n_bins = len(feature.stats["bin_counts"])
    sequences = []
    for e in feature.examples:
        key = (e.kind, e.bin, e.rank)
        sequences.append(sequence(e, attention.get(key), prefixes.get(key, []), vocab,
                                  n_bins + 1 if e.kind == "top" else e.bin + 1))
    hist, edges = feature.stats.get("hist") or [], feature.stats.get("hist_edges") or []
    used = [i for i, c in enumerate(hist) if c] or [0]
    return {
        "sequences": sequences, "qk_distance_histogram": qk_histogram(sequences),
        "top_query_tokens": top_tokens(sequences, "query"), "top_key_tokens": top_tokens(sequences, "key"),
        "histogram": {"bin_edges": [float(x) for x in edges[used[0]:used[-1] + 2]],
                      "bin_values": [int(c) for c in hist[used[0]:used[-1] + 1]]},
        "statistics": {"n_samples": len(sequences), "mean_max_activation": finite(feature.stats["mean"])},
    }


def _attention(source, layer: int, metric: str) -> tuple[dict, dict]:
    """Per head: {(kind, bin, rank): (src_pos, weights)} and {(kind, bin, rank): prefix ids}."""
    if not source.has("head_attention"):
        return {}, {}
    rows = source.query(
        "SELECT a.head, a.kind, a.bin, a.rank, a.src_pos, a.weights, "
        "CASE WHEN list_min(a.src_pos) < e.window_start THEN c.token_ids[list_min(a.src_pos) + 1:e.window_start] "
        "END AS prefix FROM head_attention a JOIN head_examples e USING (layer, head, metric, kind, bin, rank) "
        "LEFT JOIN contexts c ON c.ctx_id = e.ctx_id AND list_min(a.src_pos) < e.window_start "
        "WHERE a.layer = ? AND a.metric = ?", [layer, metric]).to_pydict()
    attention: dict = defaultdict(dict)
    prefixes: dict = defaultdict(dict)
    for h, k, b, r, src, w, prefix in zip(*rows.values()):
        attention[h][(k, b, r)] = (src, w)
        if prefix:
            prefixes[h][(k, b, r)] = prefix
    return attention, prefixes


def scatter(source, heads: list[tuple[int, int]]) -> list[dict[str, Any]]:
    wiki = {}
    if source.has("head_wiki"):
        rows = source.query("SELECT * FROM head_wiki").to_pylist()
        wiki = {(r["layer"], r["head"]): r for r in rows}
    entropy = source.query("SELECT layer, head, mean FROM heads WHERE metric = 'entropy'").to_pydict()
    entropy = {(l, h): m for l, h, m in zip(*entropy.values())}
    out = []
    for layer, head in heads:
        row = wiki.get((layer, head), {})
        values = {name: finite(row.get(col)) if col else None for name, (col, _) in SCATTER.items()}
        out.append({"layer": layer, "head": head, **values, "pattern_entropy": finite(entropy.get((layer, head)))})
    return out


def write(source, work, out: Path, options: ExportOptions, bar) -> dict[str, Any]:
    """Write the HeadVis tree of the heads in ``work``; returns the summary's entries."""
    site = work[0][0]  # one metric: the runner's plan allows no more
    vocab, manifest = source.vocab(), source.manifest
    folder = run_folder(out, manifest, options)
    heads, n_intervals = [], 0
    for _, layer, indices in work:
        attention, prefixes = _attention(source, layer, site.metric)
        for feature in source.features(site, layer, indices):
            write_json(folder / "heads" / f"L{layer}H{feature.index}.json",
                       head_file(feature, attention.get(feature.index, {}), prefixes.get(feature.index, {}), vocab))
            heads.append((layer, feature.index))
            n_intervals = max(n_intervals, len(feature.stats["bin_counts"]) + 1)
            bar.update()
    model, config = manifest.get("model") or {}, manifest.get("config") or {}
    pipeline = {"model_name": model.get("name"), "np_model_id": neuronpedia.model_id(manifest, options),
                "dataset_name": folder.name, "n_sequences": (manifest.get("counts") or {}).get("contexts"),
                "seq_len": manifest.get("ctx_len"), "dtype": config.get("dtype", "float32"),
                "attn_implementation": "neuroscope", "sequence_metric": site.metric,
                "n_layers": model.get("n_layers"), "n_heads": model.get("n_heads"), "created_at": manifest.get("created")}
    write_json(folder / "config.json", {
        "model_name": model.get("name"), "np_model_id": pipeline["np_model_id"], "dataset_name": folder.name,
        "heads": [list(h) for h in heads], "n_layers": model.get("n_layers"), "n_heads": model.get("n_heads"),
        "n_intervals": n_intervals, "metrics": list(SCATTER),
        "metric_descriptions": {name: text for name, (_, text) in SCATTER.items()},
        "head_data_pattern": "L{layer}H{head}.json", "has_umap": False, "umap_heads": [],
        "custom_plots": [{"key": "qk_distance_histogram", "label": "Q-K distance"},
                         {"key": "histogram", "label": f"{site.metric} distribution (per token)"}],
        "custom_tables": [{"key": "top_query_tokens", "label": "Top query tokens"},
                          {"key": "top_key_tokens", "label": "Top key tokens"}],
        "statistics_display": {"n_samples": {"label": "Samples kept", "format": "default"},
                               "mean_max_activation": {"label": f"Mean {site.metric} (per token)", "format": "default"}},
        "pipeline_config": pipeline,
    }, indent=2)
    write_json(folder / "scatter_data.json", scatter(source, heads))
    write_json(folder / "server_config.json", {})
    write_json(folder / "attributions" / "manifest.json", {})
    return {"model_id": pipeline["np_model_id"], "folder": str(folder.relative_to(out)), "heads": len(heads)}
