"""Exports of a real toy-1l index (neurons, heads and the embedded SAE's latents, over code,
prose and a corpus of HTML/script text) read back by the formats' own code where it installs
(OpenAI's ``neuron_explainer`` reader, Neuronpedia's ``neuronpedia`` upload client) and checked
against the published schemas where it does not (Neuronpedia's upload route and bulk rows,
delphi's records, HeadVis's loaders): what loads equals what the index holds."""

from __future__ import annotations

import gzip
import json
import re
import sys
import types
from dataclasses import dataclass, field

import pytest

from helpers.configs import base_config
from helpers.export_schemas import BULK_ACTIVATION, BULK_FEATURE, check_headvis_run, check_upload_batch
from helpers.paths import ROOT
from helpers.viewer import write_hostile_corpus
from indexer.errors import ConfigError
from indexer.export.options import ExportOptions
from indexer.export.runner import export
from indexer.store.query import open_index

pytestmark = pytest.mark.slow
SAE = "sae:toy-1l-mlp-out"


@pytest.fixture(scope="module")
def ix(tmp_path_factory):
    from indexer.analyses.common import Options
    from indexer.analyses.runner import analyze
    from indexer.run.bench import DEMO_SAE
    from indexer.run.engine import index

    root = tmp_path_factory.mktemp("export")
    corpus = write_hostile_corpus(root / "hostile.jsonl")
    out = index(base_config("toy-1l", str(root / "idx"), corpus=["code", "prose", f"hostile={corpus}"],
                            sae=[DEMO_SAE]), progress=False)
    analyze(out, only="latents", options=Options(device="cpu", progress=False))  # the latents' logit effects
    return out


class Index:
    """The index's own rows, read with DuckDB, to compare the exports with."""

    def __init__(self, root):
        conn = open_index(root)
        self.vocab = dict(conn.sql("SELECT token_id, token_str FROM vocab").fetchall())
        self.tables = {t: conn.sql(f"SELECT * FROM {t}").to_arrow_table().to_pylist()
                       for t in ("neurons", "examples", "heads", "head_examples", "head_attention", "contexts",
                                 "latent_logit_effects")}
        conn.close()

    def stats(self, site: str, layer: int, n: int) -> dict:
        (row,) = [r for r in self.tables["neurons"] if (r["site"], r["layer"], r["neuron"]) == (site, layer, n)]
        return row

    def examples(self, site: str, layer: int, n: int) -> list[dict]:
        found = [r for r in self.tables["examples"] if (r["site"], r["layer"], r["neuron"]) == (site, layer, n)]
        return sorted(found, key=lambda r: (r["kind"] != "top", r["bin"], r["rank"]))

    def window(self, e: dict) -> tuple[list[str], list[float]]:
        cut = 1 if e["window_start"] == 0 else 0  # BOS is never exported (but by headvis)
        return [self.vocab[i] for i in e["window_token_ids"][cut:]], [float(v) for v in e["window_acts"][cut:]]


@pytest.fixture(scope="module")
def held(ix):
    return Index(ix)


FEATURES = ((0, 40), (1000, 1030))  # a slice of the neurons and of the latents keeps the exports quick


def test_neuron_records_load_in_openai_reader(ix, held, tmp_path):
    from neuron_explainer.activations.activations import ActivationRecordSliceParams, NeuronRecord, load_neuron

    summary = export(ix, tmp_path, ExportOptions("neuron-record", features=FEATURES, progress=False))
    assert {p["site"] for p in summary["plan"]} == {"mlp_post", SAE}
    loaded = 0
    for site in ("mlp_post", SAE):
        for path in sorted((tmp_path / site / "0").glob("*.json")):
            record = load_neuron(0, int(path.stem), f"file://{tmp_path / site}")
            assert isinstance(record, NeuronRecord)
            n = record.neuron_id.neuron_index
            stats, examples = held.stats(site, 0, n), held.examples(site, 0, n)
            top = [held.window(e) for e in examples if e["kind"] == "top"]
            assert [(r.tokens, r.activations) for r in record.most_positive_activation_records] == top
            assert record.max_activation == max(max(v) for _, v in top)
            bins = [[held.window(e) for e in examples if e["kind"] == "quantile" and e["bin"] == b]
                    for b in range(len(stats["bin_counts"]))]
            assert [[(r.tokens, r.activations) for r in rs] for rs in record.random_sample_by_quantile] == bins
            assert [(r.tokens, r.activations) for r in record.random_sample] == [w for b in bins for w in b]
            assert record.quantile_boundaries == stats["quantile_edges"]
            assert (record.mean, record.variance) == (stats["mean"], stats["std"] ** 2)
            assert len(record.train_activation_records(ActivationRecordSliceParams(None))) == len(top) // 4
            loaded += 1
    assert loaded == summary["features"] - sum(len(v) for v in summary["skipped"].values()) > 50


def test_neuronpedia_batches_go_through_the_upload_client(ix, held, tmp_path, monkeypatch):
    import requests

    from neuronpedia.np_activation import Activation
    from neuronpedia.np_feature import Feature, Logit
    from neuronpedia.np_source import Source

    with pytest.raises(ConfigError, match="--source-set names one source set"):  # mlp_post and the SAE in one set
        export(ix, tmp_path, ExportOptions("neuronpedia", source_set="mine", progress=False))
    export(ix, tmp_path, ExportOptions("neuronpedia", features=FEATURES, progress=False))
    sent = []
    monkeypatch.setenv("NEURONPEDIA_API_KEY", "test-key")
    monkeypatch.setattr(requests, "request", lambda method, url, **kw: sent.append(kw["json"]) or _Ok())
    files = sorted(tmp_path.glob("*/batch-*.json"))
    assert {f.parent.name for f in files} >= {"0-neuroscope-mlp-post", "0-neuroscope-sae-toy-1l-mlp-out",
                                              "0-neuroscope-heads-max-attn"}
    text = "".join(f.read_text() for f in files)
    tokens = {t for f in files for x in json.loads(f.read_text())["features"] for a in x["activations"] for t in a["tokens"]}
    assert any("<" in t for t in tokens) and any("script" in t for t in tokens)  # the hostile corpus's markup,
    assert "&lt;" not in text and "\\u003c" not in text  # exactly as stored (compared with the vocab below)
    for path in files:
        body = json.loads(path.read_text())
        check_upload_batch(body)
        features = []
        for f in body["features"]:
            logits = {k: [Logit(**t) for t in f[k]] if f[k] else None for k in ("topLogits", "bottomLogits")}
            features.append(Feature(
                modelId=body["modelId"], source=body["source"], index=f["index"], density=f["density"],
                top_logits=logits["topLogits"], bottom_logits=logits["bottomLogits"], explanations=None,
                activations=[Activation(modelId=body["modelId"], source=body["source"], index=f["index"], **a)
                             for a in f["activations"]]))
        Source(id=body["source"], model_id=body["modelId"], set_name=body["source"].split("-", 1)[1]).upload_batch(features)
        assert sent[-1] == body  # the client sends our file as it is
    latents = json.loads((tmp_path / "0-neuroscope-sae-toy-1l-mlp-out" / "batch-0.json").read_text())["features"]
    for f in latents:
        stats, examples = held.stats(SAE, 0, f["index"]), held.examples(SAE, 0, f["index"])
        assert f["density"] == stats["frac_active"]
        assert [(a["tokens"], a["values"]) for a in f["activations"]] == [held.window(e) for e in examples]
        effects = sorted((r for r in held.tables["latent_logit_effects"] if r["neuron"] == f["index"]),
                         key=lambda r: r["rank"])
        assert f["topLogits"] == [{"token": r["token_str"], "value": r["value"]} for r in effects if r["direction"] == "up"]
        shares = {a["quantileFraction"] for a in f["activations"]} - {None}
        assert shares <= set(stats["bin_shares"])


class _Ok:
    """What ``requests.request`` returns for a 200 (the client reads these three)."""

    status_code = 200

    def raise_for_status(self) -> None:
        pass

    def json(self):
        return {"message": "ok"}


def test_bulk_rows_match_the_importers_tables(ix, held, tmp_path):
    export(ix, tmp_path, ExportOptions("neuronpedia", bulk=True, sites=(SAE,), features=FEATURES, progress=False))
    source = tmp_path / "toy-1l" / "0-neuroscope-sae-toy-1l-mlp-out"
    features = [json.loads(x) for p in sorted(source.glob("features/*.gz")) for x in gzip.decompress(p.read_bytes()).splitlines()]
    activations = [json.loads(x) for p in sorted(source.glob("activations/*.gz"))
                   for x in gzip.decompress(p.read_bytes()).splitlines()]
    assert features and all(set(f) == BULK_FEATURE for f in features)
    assert activations and all(set(a) == BULK_ACTIVATION for a in activations)
    for f in features:
        mine = [a for a in activations if a["index"] == f["index"]]
        examples = held.examples(SAE, 0, int(f["index"]))
        assert [(a["tokens"], a["values"]) for a in mine] == [held.window(e) for e in examples]
        assert f["maxActApprox"] == max(a["maxValue"] for a in mine) == held.stats(SAE, 0, int(f["index"]))["max"]


def test_delphi_readme_snippet_builds_latent_records(ix, held, tmp_path, monkeypatch):
    export(ix, tmp_path, ExportOptions("delphi", features=FEATURES, progress=False))
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(# delphi: load a neuroscope export.*?)```", readme, re.DOTALL).group(1)
    monkeypatch.setitem(sys.modules, "delphi", types.ModuleType("delphi"))
    monkeypatch.setitem(sys.modules, "delphi.latents", _delphi_latents())
    monkeypatch.setitem(sys.modules, "delphi.latents.samplers", sys.modules["delphi.latents"])
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    records = list(scope["load_records"](tmp_path / "layers.0.sae.toy-1l-mlp-out.jsonl"))
    assert len(records) > 20
    for record in records:
        n = record.latent.latent_index
        examples = held.examples(SAE, 0, n)
        top = [held.window(e) for e in examples if e["kind"] == "top"]
        assert record.latent.module_name == "layers.0.sae.toy-1l-mlp-out"
        assert [(e.str_tokens, e.activations.tolist()) for e in record.train] == top
        assert record.max_activation == max(max(v) for _, v in top)  # examples sorted by max activation
        assert record.per_token_frequency == held.stats(SAE, 0, n)["frac_active"]
        assert all(e.normalized_activations is not None for e in record.train + record.test)
        assert all(max(e.activations.tolist()) <= 0 and len(e.tokens) >= 8 for e in record.not_active)


def _delphi_latents() -> types.ModuleType:
    """delphi's record classes with the fields of delphi/latents/latents.py (EleutherAI/delphi
    @ 3c2e1393, eai-delphi 0.1.3, which pins vllm and its torch so cannot install here) and
    its samplers.normalize_activations: ceil(10 a / max).clamp(0, 10)."""
    import torch

    module = types.ModuleType("delphi.latents")

    @dataclass
    class Latent:
        module_name: str
        latent_index: int

    @dataclass
    class Example:
        tokens: torch.Tensor
        activations: torch.Tensor

        @property
        def max_activation(self) -> float:
            return float(self.activations.max())

    @dataclass
    class ActivatingExample(Example):
        normalized_activations: torch.Tensor | None = None
        str_tokens: list[str] | None = None
        quantile: int = 0

    @dataclass
    class NonActivatingExample(Example):
        str_tokens: list[str]
        distance: float = 0.0

    @dataclass
    class LatentRecord:
        latent: Latent
        examples: list = field(default_factory=list)
        not_active: list = field(default_factory=list)
        train: list = field(default_factory=list)
        test: list = field(default_factory=list)
        neighbours: list = field(default_factory=list)
        explanation: str = ""
        extra_examples: list | None = None
        per_token_frequency: float = 0.0
        per_context_frequency: float = 0.0

        @property
        def max_activation(self) -> float:
            return self.examples[0].max_activation

    def normalize_activations(examples, max_activation, eps=1e-6):
        for e in examples:
            e.normalized_activations = (e.activations * 10 / max(max_activation, eps)).ceil().clamp(0, 10)
        return examples

    for obj in (Latent, Example, ActivatingExample, NonActivatingExample, LatentRecord, normalize_activations):
        setattr(module, obj.__name__, obj)
    return module


def test_headvis_tree_passes_the_loaders_checks(ix, held, tmp_path):
    summary = export(ix, tmp_path, ExportOptions("headvis", progress=False))
    run = tmp_path / summary["folder"]
    config, scatter, heads = check_headvis_run(run)
    assert summary["folder"] == "toy-1l/headvis/code-prose-hostile" and len(heads) == 4
    contexts = {c["ctx_id"]: c["token_ids"] for c in held.tables["contexts"]}
    attention = {(a["head"], a["kind"], a["bin"], a["rank"]): a for a in held.tables["head_attention"]
                 if a["metric"] == "max_attn"}
    for (layer, head), payload in heads.items():
        examples = sorted((e for e in held.tables["head_examples"]
                           if (e["layer"], e["head"], e["metric"]) == (layer, head, "max_attn")),
                          key=lambda e: (e["kind"] != "top", e["bin"], e["rank"]))
        assert len(payload["sequences"]) == len(examples) == payload["statistics"]["n_samples"]
        for s, e in zip(payload["sequences"], examples):
            a = attention[(head, e["kind"], e["bin"], e["rank"])]
            first = min([e["window_start"], *a["src_pos"]])
            end = e["window_start"] + len(e["window_token_ids"])
            assert s["tokens"] == [held.vocab[i] for i in contexts[e["ctx_id"]][first:end]]
            q = e["pos"] - first
            assert s["attention_indices"] == [q * s["seq_len"] + k - first for k in a["src_pos"]]
            assert s["attention_values"] == a["weights"] and s["max_activation"] == e["activation"]
    (stats,) = [h for h in held.tables["heads"] if (h["layer"], h["head"], h["metric"]) == (0, 0, "entropy")]
    assert scatter[0]["pattern_entropy"] == stats["mean"]
