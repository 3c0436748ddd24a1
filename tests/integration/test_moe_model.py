"""A mixture-of-experts model (tiny random Mixtral): its default sites are every expert's neurons
(``experts``) and heads. Each expert neuron is recorded over the tokens routed to its expert only:
its token count, min, max and every example (value and window, NaN where not routed) equal the
values computed from hooks on the model's own experts module; head metrics equal the eager
attention weights; analyze runs (expert usage equals the routing, logit effects per expert
neuron); SQL and the viewer name the expert; MLP sites are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import hf_archs
from helpers.viewer import open_page
from indexer import cli
from indexer.api import Index

pytestmark = pytest.mark.slow


MOE = [name for name, arch in hf_archs.ARCHS.items() if arch.experts]


@pytest.fixture(scope="module", params=MOE)
def moe(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    return hf_archs.build(request.param, tmp / "model"), tmp, request.param


def test_expert_neurons_and_heads_equal_the_models_own_modules(moe, monkeypatch):
    folder, tmp, name = moe
    out = tmp / "index"
    assert cli.main(["index", "--model", str(folder), "--corpus", "code", "--out", str(out), "--tokens", "600",
                     "--ctx-len", "32", "--batch-size", "8", "--top-k", "4", "--per-bin", "2",
                     "--store-contexts", "all", "--quiet"]) == 0
    model = hf_archs.load_eager(folder)
    n_experts, d_expert = hf_archs.N_EXPERTS, hf_archs.D_MLP
    d_shared = 48 if hf_archs.ARCHS[name].shared else 0
    with Index.open(out) as ix:
        assert ix.manifest["experts"] == {"n_experts": n_experts, "d_expert": d_expert, "d_shared": d_shared}
        assert {s["name"] for s in ix.manifest["sites"]} == {"experts", "heads"}
        contexts = dict(zip(ix.sql("SELECT ctx_id FROM contexts").ctx_id, ix.sql("SELECT token_ids FROM contexts").token_ids))
        ex = ix.sql("SELECT layer, head, metric, value, ctx_id, pos FROM head_examples WHERE metric IN ('max_attn', 'entropy')")
        neurons = ix.sql("SELECT layer, neuron, n_tokens, max, min FROM neurons WHERE site = 'experts' ORDER BY layer, neuron")
        examples = ix.sql("SELECT layer, neuron, kind, activation, ctx_id, pos, window_start, window_acts FROM examples "
                          "WHERE site = 'experts'")
        named = ix.sql("SELECT layer, expert, expert_neuron, neuron FROM expert_neurons ORDER BY layer, neuron")
    refs = {c: hf_archs.reference(model, name, [int(t) for t in contexts[c]]) for c in contexts}
    # every expert neuron on every token, from the experts module's input and weights; NaN where not routed
    acts = {}
    for c, ref in refs.items():
        for layer in range(hf_archs.N_LAYERS):
            a = hf_archs.expert_neurons(model, name, layer, ref[("expert_in", layer)])  # [pos, E * d]
            routed = np.repeat(ref[("route", layer)] > 0, d_expert, axis=1)
            acts[c, layer] = np.where(routed, a, np.nan)
            if d_shared:  # a shared expert's neurons see every token
                acts[c, layer] = np.concatenate([acts[c, layer], ref[("shared", layer)]], axis=1)
    scale = max(np.nanmax(np.abs(a[1:])) for a in acts.values())
    # statistics: over the tokens routed to the neuron's expert only (BOS not recorded)
    for layer in range(hf_archs.N_LAYERS):
        seen = np.concatenate([acts[c, layer][1:] for c in contexts])  # [tokens, E * d]
        rows = neurons[neurons.layer == layer]
        assert rows.n_tokens.tolist() == (~np.isnan(seen)).sum(axis=0).tolist()
        assert np.abs(rows["max"].to_numpy() - np.nanmax(seen, axis=0)).max() <= 1e-5 * scale
        assert np.abs(rows["min"].to_numpy() - np.nanmin(seen, axis=0)).max() <= 1e-5 * scale
        assert len(set(rows.n_tokens)) > 1  # experts are routed different numbers of tokens
    # every example: a routed token, its value and window equal the reference (NaN where not routed)
    assert len(examples) > 0 and set(examples.kind) == {"top", "quantile"}
    worst = 0.0
    for layer, n, _, value, c, p, start, window in examples.itertuples(index=False):
        want = acts[c, layer][:, n]
        assert not np.isnan(want[p]), "an example on a token the expert never saw"
        worst = max(worst, abs(value - want[p]))
        w = np.asarray(window, np.float64)
        ref_w = want[start:start + len(w)]
        assert np.array_equal(np.isnan(w[:len(ref_w)]), np.isnan(ref_w))
        worst = max(worst, np.nanmax(np.abs(w[:len(ref_w)] - ref_w), initial=0.0))
    assert worst <= 1e-5 * scale, worst
    routed = named[named.neuron < n_experts * d_expert]
    assert (routed.expert == routed.neuron // d_expert).all() and (routed.expert_neuron == routed.neuron % d_expert).all()
    assert (named[named.neuron >= n_experts * d_expert].expert == n_experts).all()
    got, want = [], []
    for layer, head, metric, value, c, p in ex.itertuples(index=False):
        got.append(value)
        want.append(hf_archs.head_reference(refs[c][("attn", int(layer))])[metric][head, p])
    assert len(got) > 0 and np.abs(np.array(got) - np.array(want)).max() / np.log(32) <= 1e-5
    assert cli.main(["analyze", str(out), "--top-ranks", "1", "--quiet"]) == 0
    with Index.open(out) as ix:
        usage = ix.sql("SELECT layer, expert, n_tokens, n_tokens_read, share FROM expert_usage ORDER BY layer, expert")
        effects = ix.sql("SELECT layer, neuron, token_id, value FROM logit_effects WHERE direction = 'up' AND rank = 0")
    for layer in range(hf_archs.N_LAYERS):
        want = sum(refs[c][("route", layer)][1:].sum(axis=0) for c in contexts)  # every context: --store-contexts all
        rows = usage[usage.layer == layer]
        assert rows.n_tokens.tolist() == want.astype(int).tolist() and rows.share.sum() == pytest.approx(2.0)
        counted = neurons[neurons.layer == layer].n_tokens.to_numpy()
        assert counted[:n_experts * d_expert].reshape(n_experts, d_expert)[:, 0].tolist() == want.astype(int).tolist()
        assert (counted[n_experts * d_expert:] == sum(len(t) - 1 for t in contexts.values())).all()
    assert set(usage.n_tokens_read) == {sum(len(t) - 1 for t in contexts.values())}
    assert len(effects) == hf_archs.N_LAYERS * (n_experts * d_expert + d_shared)
    at = open_page(monkeypatch, out, page="neuron", site="experts", layer=1, neuron=d_expert + 3)
    assert "expert 1 neuron 3" in at.title[0].value, at.title[0].value
    if d_shared:
        at = open_page(monkeypatch, out, page="neuron", site="experts", layer=0, neuron=n_experts * d_expert + 5)
        assert "shared expert neuron 5" in at.title[0].value, at.title[0].value
    at = open_page(monkeypatch, out, page="head", layer=1, head=2)
    assert "head" in at.title[0].value.lower() and "2" in at.title[0].value, at.title[0].value


def test_mlp_sites_of_a_moe_model_are_refused_in_one_line(moe, capsys):
    folder, tmp, name = moe
    assert cli.main(["index", "--model", str(folder), "--corpus", "code", "--out", str(tmp / "x"),
                     "--sites", "mlp_post", "--quiet"]) == 1
    err = capsys.readouterr().err  # transformers' own "Loading weights" bar may come first
    ours = [line for line in err.splitlines() if line.startswith("neuroscope")]
    assert "Traceback" not in err and len(ours) == 1
    assert ours[0].startswith("neuroscope: error: --sites mlp_post:") and "--sites experts" in ours[0]


def test_experts_site_of_a_dense_model_is_refused_in_one_line(tmp_path, capsys):
    assert cli.main(["index", "--model", "toy-1l", "--corpus", "code", "--out", str(tmp_path / "x"),
                     "--sites", "experts", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neuroscope: error: --sites experts") and "dense" in err[0]
