"""The architecture matrix: tiny random Hugging Face models of each family, indexed with their
default sites through the command line, every stored value checked against the model's own
modules read with plain ``transformers`` hooks (not TransformerLens), head metrics against
eager attention weights; ``analyze`` runs and the viewer opens a neuron page."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import hf_archs
from helpers.viewer import open_page
from indexer import cli
from indexer.api import Index

DENSE = [name for name, arch in hf_archs.ARCHS.items() if not arch.experts]
GATED_SITES = {"llama"}  # index mlp_gate and mlp_up too (the other gated families share its bridge component)
TOLERANCE = 1e-5  # max relative error in float32
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=DENSE)
def indexed(request, tmp_path_factory):
    """(arch name, model folder, index folder, references of every stored context)."""
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    folder = hf_archs.build(name, tmp / "model")
    sites = "mlp_post,mlp_gate,mlp_up,heads" if name in GATED_SITES else "all"
    out = tmp / "index"
    assert cli.main(["index", "--model", str(folder), "--corpus", "code", "--out", str(out), "--tokens", "500",
                     "--ctx-len", "32", "--batch-size", "8", "--top-k", "4", "--per-bin", "2",
                     "--store-contexts", "all", "--sites", sites, "--quiet"]) == 0
    model = hf_archs.load_eager(folder)
    with Index.open(out) as ix:
        contexts = ix.sql("SELECT ctx_id, token_ids FROM contexts")
    refs = {int(c): hf_archs.reference(model, name, [int(t) for t in ids])
            for c, ids in zip(contexts.ctx_id, contexts.token_ids)}
    return name, folder, out, refs, model


def test_default_and_gated_sites(indexed):
    from indexer.forward.sites import plan_sites
    from indexer.inputs.models import load_model

    name, folder, out, _, _ = indexed
    info = load_model(str(folder)).info
    assert {s.name for s in plan_sites(info)} == {"mlp_post", "heads"}  # the defaults (gated indexes ask for more)
    assert info.gated == bool(hf_archs.ARCHS[name].gated)
    with Index.open(out) as ix:
        widths = ix.sql("SELECT site, layer, count(*) AS n FROM neurons GROUP BY ALL")
    assert set(widths.site) == ({"mlp_post", "mlp_gate", "mlp_up"} if name in GATED_SITES else {"mlp_post"})
    expected = hf_archs.D_MLP if name != "bloom" else 4 * hf_archs.D_MODEL  # BLOOM's MLP is always 4 x d_model
    assert set(widths.n) == {expected} and info.d_mlp == expected, widths


def relative_error(got, want, scale) -> float:
    """max |got - want| / scale, where scale is the largest |value| the feature takes over the
    whole indexed corpus: relative to the feature's own magnitude (an elementwise ratio would
    blow up at values that are zero up to float32 rounding)."""
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    error = float((diff / np.maximum(scale, 1e-30)).max())  # a never-active ReLU neuron has scale 0 (and diff 0)
    assert np.isfinite(error), error
    return error


def every_token(refs: dict, site: str, layer: int) -> np.ndarray:
    """[tokens, features]: the reference at every indexed token (position 0, BOS, is not indexed)."""
    return np.concatenate([r[(site, layer)][1:] for r in refs.values()])


def test_every_stored_site_value_equals_the_transformers_reference(indexed):
    _, _, out, refs, _ = indexed
    with Index.open(out) as ix:
        ex = ix.sql("SELECT site, layer, neuron, activation, ctx_id, pos, window_start, window_acts FROM examples")
        stats = ix.sql("SELECT site, layer, neuron, max, min, n_tokens FROM neurons")
    assert len(ex) > 0
    errors = {}
    for (site, layer), rows in stats.groupby(["site", "layer"]):
        every = every_token(refs, site, int(layer))
        scale = np.abs(every).max(axis=0)[rows.neuron.to_numpy()]
        assert (rows.n_tokens == len(every)).all()
        for column, reduce in (("max", np.max), ("min", np.min)):
            want = reduce(every, axis=0)[rows.neuron.to_numpy()]
            errors[site, layer, column] = relative_error(rows[column], want, scale)
    for (site, layer), rows in ex.groupby(["site", "layer"]):
        scale = np.abs(every_token(refs, site, int(layer))).max(axis=0)
        got, want, scales = [], [], []
        for n, act, c, p, start, wacts in zip(rows.neuron, rows.activation, rows.ctx_id, rows.pos,
                                              rows.window_start, rows.window_acts):
            values = refs[int(c)][(site, int(layer))][:, int(n)]  # [pos]
            got += [act, *wacts]
            want += [values[p], *values[start: start + len(wacts)]]
            scales += [scale[n]] * (1 + len(wacts))
        errors[site, layer, "examples"] = relative_error(got, want, np.array(scales))
    print("max relative error", max(errors.values()))
    assert max(errors.values()) <= TOLERANCE, errors


def test_features_read_at_one_token_equal_the_transformers_reference(indexed):
    """What minimal, trigram and saliency re-run: every neuron site at each sequence's last
    token only (Batch.read_at), the last layer's MLP run on those tokens alone where the
    first batch shows that equals the full pass (every family of the matrix does)."""
    from indexer.analyses.common import IndexContext, Options

    name, _, out, refs, _ = indexed
    ix = IndexContext(out, Options(progress=False))
    try:
        forward, plan = ix._forward(sorted({s["layer"] for s in ix.neuron_sites}))
        contexts = ix.contexts()
        at = [(c, p) for c in sorted(contexts)[:4] for p in range(1, len(contexts[c]), 4)]
        batch = ix._batch([contexts[c][: p + 1] for c, p in at], max(p for _, p in at) + 1, last=True)
        for _ in range(2):  # the first batch checks the narrowed MLP; the second runs it
            got = forward(batch)
        assert forward._narrow is not None, f"{name}: the last layer's MLP was not narrowed"
        errors = {}
        for site in plan:
            want = np.stack([refs[c][(site.name, site.layer)][p] for c, p in at])
            scale = np.abs(every_token(refs, site.name, site.layer)).max(axis=0)
            errors[site.key] = relative_error(got[site][:, 0].numpy(), want, scale)
    finally:
        ix.close()
    assert max(errors.values()) <= TOLERANCE, errors


def test_head_metrics_equal_the_eager_attention_weights(indexed):
    _, _, out, refs, _ = indexed
    with Index.open(out) as ix:
        ex = ix.sql("SELECT layer, head, metric, value, ctx_id, pos FROM head_examples "
                    "WHERE metric IN ('max_attn', 'entropy')")
    assert set(ex.metric) == {"max_attn", "entropy"}
    got, want = [], []
    for layer, head, metric, value, c, p in ex.itertuples(index=False):
        got.append(value)
        want.append(hf_archs.head_reference(refs[int(c)][("attn", int(layer))])[metric][head, p])
    error = relative_error(got, want, np.log(32))  # entropy is at most log(ctx_len); max_attn at most 1
    print("max head-metric error", error)
    assert error <= TOLERANCE


def test_analyze_runs_and_the_viewer_opens_a_neuron_page(indexed, monkeypatch):
    _, _, out, _, _ = indexed
    assert cli.main(["analyze", str(out), "--top-ranks", "1", "--quiet"]) == 0  # every analysis; minimal and trigram on rank 0
    with Index.open(out) as ix:
        assert len(ix.sql("SELECT * FROM logit_effects LIMIT 1")) == 1
    at = open_page(monkeypatch, out, site="mlp_post", layer=1, neuron=3)
    assert "3" in at.title[0].value
