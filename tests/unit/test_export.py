"""`neuroscope export` on the synthetic index (no model): exact values of every format against
the index's tables, the folder rules, and one-line errors for every bad option."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from helpers.fixtures_index import build_index
from indexer.cli import main
from indexer.export.options import ExportOptions
from indexer.export.runner import export
from indexer.store import schema
from indexer.store.query import open_index
from indexer.store.writer import IndexWriter


@pytest.fixture(scope="module")
def ix(tmp_path_factory):
    """The synthetic index, with logit effects for layer 1's neurons 0-2."""
    root = build_index(tmp_path_factory.mktemp("ix") / "idx")
    rows = [(n, d, r) for n in range(3) for d in ("up", "down") for r in range(2)]
    IndexWriter(root).write(schema.LogitEffects, {
        "layer": 1, "neuron": [n for n, _, _ in rows], "direction": [d for _, d, _ in rows],
        "rank": [r for _, _, r in rows], "token_id": [7 for _ in rows],
        "token_str": [f"{d}{n}.{r}" for n, d, r in rows],
        "value": [(1.0 if d == "up" else -1.0) * (n + 1) / (r + 1) for n, d, r in rows]})
    return root


def rows(root, sql: str, params: list | None = None) -> list[dict]:
    conn = open_index(root)
    try:
        return conn.sql(sql, params=params).to_arrow_table().to_pylist()
    finally:
        conn.close()


def window(row: dict, vocab: dict[int, str], keep_bos: bool = False) -> tuple[list[str], list[float]]:
    """The example's window as the exports write it (BOS dropped unless kept)."""
    cut = 1 if row["window_start"] == 0 and not keep_bos else 0
    return [vocab[i] for i in row["window_token_ids"][cut:]], list(row["window_acts"][cut:])


@pytest.fixture(scope="module")
def vocab(ix):
    return {r["token_id"]: r["token_str"] for r in rows(ix, "SELECT * FROM vocab")}


def test_neuronpedia_batches_hold_the_index_exactly(ix, vocab, tmp_path):
    summary = export(ix, tmp_path / "np", ExportOptions("neuronpedia", sites=("mlp_post",), layers=(1,), progress=False))
    assert summary["sources"] == {"1-neuroscope-mlp-post": 6} and summary["model_id"] == "synthetic"
    body = json.loads((tmp_path / "np" / "1-neuroscope-mlp-post" / "batch-0.json").read_text())
    assert (body["modelId"], body["source"], [f["index"] for f in body["features"]]) == (
        "synthetic", "1-neuroscope-mlp-post", list(range(6)))
    for feature in body["features"]:
        (stats,) = rows(ix, "SELECT * FROM neurons WHERE site = 'mlp_post' AND layer = 1 AND neuron = ?", [feature["index"]])
        examples = rows(ix, "SELECT * FROM examples WHERE site = 'mlp_post' AND layer = 1 AND neuron = ? "
                            "ORDER BY kind DESC, bin, rank", [feature["index"]])
        assert feature["density"] == stats["frac_active"] and len(feature["activations"]) == len(examples)
        top = [e["activation"] for e in examples if e["kind"] == "top"]
        bounds = [stats["min"], *stats["quantile_edges"], stats["max"]]
        for got, e in zip(feature["activations"], examples):
            assert (got["tokens"], got["values"]) == window(e, vocab)
            if e["kind"] == "top":
                assert (got["quantileMin"], got["quantileMax"], got["quantileFraction"]) == (min(top), max(top), None)
            else:
                b = e["bin"]
                assert (got["quantileMin"], got["quantileMax"]) == (bounds[b], bounds[b + 1])
                assert got["quantileFraction"] == stats["bin_counts"][b] / stats["n_tokens"]
        n = feature["index"]
        if n < 3:  # logit effects written by the fixture; none for the others
            assert feature["topLogits"] == [{"token": f"up{n}.{r}", "value": (n + 1) / (r + 1)} for r in range(2)]
            assert feature["bottomLogits"] == [{"token": f"down{n}.{r}", "value": -(n + 1) / (r + 1)} for r in range(2)]
        else:
            assert feature["topLogits"] is None and feature["bottomLogits"] is None


def test_neuronpedia_maps_each_head_metric_to_a_source(ix, tmp_path):
    summary = export(ix, tmp_path / "np", ExportOptions("neuronpedia", sites=("heads",), features=((1, 1),),
                                                        source_set="my-heads", progress=False))
    assert summary["sources"] == {f"{layer}-my-heads-{m.replace('_', '-')}": 1
                                  for layer in (0, 1) for m in ("entropy", "max-attn")}
    body = json.loads((tmp_path / "np" / "0-my-heads-max-attn" / "batch-0.json").read_text())
    (feature,) = body["features"]
    values = [r["activation"] for r in rows(ix, "SELECT activation FROM head_examples WHERE layer = 0 AND head = 1 "
                                                "AND metric = 'max_attn' ORDER BY kind DESC, bin, rank")]
    assert feature["index"] == 1 and [a["values"][-1] for a in feature["activations"]] == values


def test_bulk_rows(ix, vocab, tmp_path):
    export(ix, tmp_path / "bulk", ExportOptions("neuronpedia", bulk=True, sites=("mlp_post",), layers=(0,),
                                                creator_id="me", progress=False))
    source = tmp_path / "bulk" / "synthetic" / "0-neuroscope-mlp-post"
    for name in ("release", "model", "sourceset", "source"):
        (row,) = [json.loads(line) for line in (source / f"{name}.jsonl").read_text().splitlines()]
        assert row["creatorId"] == "me"
    features = [json.loads(line) for line in gzip.decompress((source / "features" / "batch-0.jsonl.gz").read_bytes()).splitlines()]
    activations = [json.loads(line) for line in gzip.decompress((source / "activations" / "batch-0.jsonl.gz").read_bytes()).splitlines()]
    assert [f["index"] for f in features] == [str(n) for n in range(6)]
    examples = rows(ix, "SELECT * FROM examples WHERE site = 'mlp_post' AND layer = 0 ORDER BY neuron, kind DESC, bin, rank")
    assert len(activations) == len(examples) and len({a["id"] for a in activations}) == len(activations)
    for a, e in zip(activations, examples):
        tokens, values = window(e, vocab)
        assert (a["index"], a["tokens"], a["values"]) == (str(e["neuron"]), tokens, values)
        assert (a["maxValue"], a["minValue"], a["maxValueTokenIndex"]) == (max(values), min(values), values.index(max(values)))
        assert tokens[a["qualifyingTokenIndex"]] == vocab[e["token_id"]] and values[a["qualifyingTokenIndex"]] == e["activation"]
        assert (a["binMin"], a["binContains"]) == (-1.0, -1.0) if e["kind"] == "top" else a["binContains"] > 0
    stats = rows(ix, "SELECT * FROM neurons WHERE site = 'mlp_post' AND layer = 0 ORDER BY neuron")
    for f, s in zip(features, stats):
        edges = s["hist_edges"]
        assert f["frac_nonzero"] == s["frac_active"] and f["maxActApprox"] == max(
            a["maxValue"] for a in activations if a["index"] == f["index"])
        assert f["freq_hist_data_bar_heights"] == [c for c, lo in zip(s["hist"], edges) if lo >= 0]


def test_neuron_record_and_delphi_files(ix, vocab, tmp_path):
    export(ix, tmp_path / "nr", ExportOptions("neuron-record", layers=(0,), features=((2, 2),), progress=False))
    record = json.loads((tmp_path / "nr" / "mlp_post" / "0" / "2.json").read_text())
    (stats,) = rows(ix, "SELECT * FROM neurons WHERE site = 'mlp_post' AND layer = 0 AND neuron = 2")
    examples = rows(ix, "SELECT * FROM examples WHERE site = 'mlp_post' AND layer = 0 AND neuron = 2 ORDER BY kind DESC, bin, rank")
    assert record["neuron_id"] == {"dataclass_name": "NeuronId", "layer_index": 0, "neuron_index": 2}
    assert [[r["tokens"], r["activations"]] for r in record["most_positive_activation_records"]] == [
        list(window(e, vocab)) for e in examples if e["kind"] == "top"]
    assert record["quantile_boundaries"] == stats["quantile_edges"]
    assert (record["mean"], record["variance"]) == (stats["mean"], stats["std"] ** 2)
    export(ix, tmp_path / "d", ExportOptions("delphi", layers=(0,), features=((2, 2),), progress=False))
    (line,) = (tmp_path / "d" / "layers.0.mlp_post.jsonl").read_text().splitlines()
    latent = json.loads(line)
    assert latent["latent"] == {"module_name": "layers.0.mlp_post", "latent_index": 2}
    assert [(e["str_tokens"], e["activations"]) for e in latent["train"]] == [
        window(e, vocab) for e in examples if e["kind"] == "top"]
    positive = sorted((e for e in examples if e["kind"] == "quantile" and e["activation"] > 0), key=lambda e: -e["bin"])
    assert [(e["quantile"], e["activations"][-1]) for e in latent["test"]] == [(2 - e["bin"], e["activation"]) for e in positive]


def test_folder_rules(ix, tmp_path):
    out = tmp_path / "out"
    export(ix, out, ExportOptions("delphi", progress=False))
    (out / "notes.txt").write_text("mine")
    export(ix, out, ExportOptions("delphi", layers=(1,), progress=False))  # an earlier export is replaced
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "layers.1.mlp_post.jsonl", "notes.txt"]
    assert json.loads((out / "export.json").read_text())["written"] == ["layers.1.mlp_post.jsonl"]
    marker = json.loads((out / "export.json").read_text())
    (out / "export.json").write_text(json.dumps({"kept": ["notes.txt"]}))  # as an interrupted export leaves it
    (out / "half-written").mkdir()
    export(ix, out, ExportOptions("delphi", layers=(1,), progress=False))
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "layers.1.mlp_post.jsonl", "notes.txt"]
    assert json.loads((out / "export.json").read_text())["written"] == marker["written"]


def error(capsys, *args: str) -> str:
    assert main(["export", *args]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuroscope: error: "), lines
    return lines[0]


def test_bad_options_are_one_line(ix, tmp_path, capsys):
    out = str(tmp_path / "o")
    cases = {
        ("--format", "csv"): "expected one of neuronpedia, neuron-record, delphi, headvis",
        ("--layers", "0"): "--format is required",
        ("--format", "delphi", "--site", "mlp_pre"): "--site mlp_pre: no such site",
        ("--format", "delphi", "--site", "heads"): "neuron and SAE sites, not heads",
        ("--format", "delphi", "--layers", "7"): "--layers: no layer 7",
        ("--format", "delphi", "--layers", "x"): "--layers 'x'",
        ("--format", "delphi", "--features", "5-2"): "runs backwards",
        ("--format", "delphi", "--features", "a"): "expected a comma list of indices",
        ("--format", "delphi", "--features", "900"): "--features: no feature 900",
        ("--format", "delphi", "--bulk"): "--bulk applies to --format neuronpedia",
        ("--format", "neuronpedia", "--creator-id", "x"): "--creator-id applies to --bulk",
        ("--format", "neuronpedia", "--model-id", "GPT 2"): "--model-id 'GPT 2'",
        ("--format", "headvis", "--site", "heads"): "one head metric",
    }
    for args, needle in cases.items():
        assert needle in error(capsys, str(ix), out, *args), args
    assert not (tmp_path / "o").exists()  # nothing written before the options are checked
    assert "outside the index" in error(capsys, str(ix), str(ix / "sub"), "--format", "delphi")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    assert "not empty" in error(capsys, str(ix), str(tmp_path / "full"), "--format", "delphi")
    assert "not a neuroscope index" in error(capsys, str(tmp_path), out, "--format", "delphi")


def test_missing_sites_and_empty_index_say_so(ix, tmp_path, capsys):
    empty = tmp_path / "empty"
    IndexWriter(empty).write_manifest({"format": "neuroscope-index", "status": "complete", "model": {"name": "x"}})
    assert "holds no features" in error(capsys, str(empty), str(tmp_path / "o"), "--format", "neuronpedia")
    no_heads = tmp_path / "no-heads"
    shutil.copytree(ix, no_heads)
    for table in ("heads", "head_examples"):
        shutil.rmtree(no_heads / table)
    assert "no heads site" in error(capsys, str(no_heads), str(tmp_path / "o"), "--format", "headvis")
