"""Schema checks written from the published definitions of formats whose own readers do not
install here (each function cites its source)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _text(x) -> bool:  # yup's string().required() refuses '' too
    return isinstance(x, str) and x != ""


def check_upload_batch(body: dict) -> None:
    """The yup schema of Neuronpedia's ``POST /api/feature/upload-batch``
    (hijohnnylin/neuronpedia apps/webapp/app/api/feature/upload-batch/route.tsx, with
    topLogits/bottomLogits) and the route's own checks after it (tokens and values of equal
    length, unique indexes). ``modelId`` and ``source`` are lowercased by the schema: ours
    must already be, or the source would not be found."""
    assert _text(body["modelId"]) and body["modelId"] == body["modelId"].lower()
    assert _text(body["source"]) and body["source"] == body["source"].lower()
    features = body["features"]
    assert 1 <= len(features) <= 128
    assert len({f["index"] for f in features}) == len(features)
    for f in features:
        assert isinstance(f["index"], int) and 0 <= f["index"] <= 10_000_000
        assert "density" not in f or (_number(f["density"]) and 0 <= f["density"] <= 1)  # optional, not nullable
        for key in ("topLogits", "bottomLogits"):
            if f.get(key) is not None:
                assert len(f[key]) <= 20 and all(_text(t["token"]) and _number(t["value"]) for t in f[key])
        for e in f.get("explanations") or []:
            assert _text(e["text"]) and len(e["text"]) <= 512
        assert len(f["activations"]) >= 1
        for a in f["activations"]:
            assert 1 <= len(a["tokens"]) <= 1024 and all(_text(t) for t in a["tokens"])
            assert 1 <= len(a["values"]) <= 1024 and all(_number(v) for v in a["values"])
            assert len(a["tokens"]) == len(a["values"])
            for key in ("quantileMax", "quantileMin"):
                assert a.get(key) is None or (_number(a[key]) and a[key] <= 99_999_999)
            assert a.get("quantileFraction") is None or (_number(a["quantileFraction"]) and 0 <= a["quantileFraction"] <= 1)


# The rows of Neuronpedia's bulk import: the dataclasses of SAEDashboard 0.8.0
# sae_dashboard/neuronpedia/neuronpedia_export.py (mirroring neuronpedia-utils db_models),
# whose __dict__ is each JSON line.
BULK_ACTIVATION = {
    "id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue", "values", "creatorId",
    "dataSource", "dataIndex", "dfaValues", "dfaTargetIndex", "dfaMaxValue", "createdAt", "lossValues",
    "logitContributions", "binMin", "binMax", "binContains", "qualifyingTokenIndex", "zIndices", "zValues",
}
BULK_FEATURE = {
    "modelId", "layer", "index", "creatorId", "createdAt", "maxActApprox", "hasVector", "vector", "vectorLabel",
    "vectorDefaultSteerStrength", "hookName", "topkCosSimIndices", "topkCosSimValues", "neuron_alignment_indices",
    "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices", "correlated_neurons_pearson",
    "correlated_neurons_l1", "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_heights",
    "freq_hist_data_bar_values", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
    "decoder_weights_dist", "sourceSetName",
}
_HEADVIS_CONFIG = ("model_name", "dataset_name", "n_sequences", "seq_len", "dtype", "attn_implementation")
_HEADVIS_METRICS = ("self_attention_score", "prev_token_score", "pattern_entropy", "qk_distance",
                    "qk_distance_variance", "induction_score")
_FRONTEND = ("heads", "n_layers", "n_heads", "n_intervals", "metrics", "metric_descriptions", "head_data_pattern")


def check_headvis_run(run: Path) -> tuple[dict, list[dict], dict[tuple[int, int], dict]]:
    """What Neuronpedia's HeadVis loaders require of a run folder (hijohnnylin/neuronpedia
    utils/neuronpedia-utils/neuronpedia_utils/headvis/load-head-metrics.py and
    load-head-sequences.py: the run config's keys, after merging ``pipeline_config``; scatter
    rows with layer, head and the six metrics as numbers or null; per-head files with
    sequences whose COO lists match), plus the frontend's config keys written by
    compute-head-metrics.py. Returns (config, scatter rows, {(layer, head): head file})."""
    assert run.parent.name == "headvis"  # <exports>/<np model id>/headvis/<dataset>/
    config = json.loads((run / "config.json").read_text())
    merged = {**config, **config["pipeline_config"]}
    assert all(merged.get(k) is not None for k in _HEADVIS_CONFIG) and all(k in config for k in _FRONTEND)
    assert json.loads((run / "server_config.json").read_text()) == {}
    assert json.loads((run / "attributions" / "manifest.json").read_text()) == {}
    scatter = json.loads((run / "scatter_data.json").read_text())
    heads = {}
    for row in scatter:
        assert all(row[k] is None or _number(row[k]) for k in _HEADVIS_METRICS)
        path = run / "heads" / config["head_data_pattern"].format(layer=row["layer"], head=row["head"])
        assert re.fullmatch(r"L(\d+)H(\d+)\.json", path.name)
        payload = json.loads(path.read_text())
        for s in payload["sequences"]:
            n = len(s["tokens"])
            assert s["seq_len"] == n and all(isinstance(t, str) for t in s["tokens"])
            assert len(s["attention_indices"]) == len(s["attention_values"])
            assert all(isinstance(i, int) and 0 <= i < n * n for i in s["attention_indices"])
            assert 1 <= s["interval"] <= config["n_intervals"] and _number(s["max_activation"])
        hist = payload["histogram"]
        assert len(hist["bin_edges"]) == len(hist["bin_values"]) + 1
        assert len(payload["top_query_tokens"]) <= 50 and len(payload["top_key_tokens"]) <= 50
        assert payload["statistics"]["n_samples"] == len(payload["sequences"])
        heads[(row["layer"], row["head"])] = payload
    assert sorted(heads) == sorted(tuple(h) for h in config["heads"])
    return config, scatter, heads
