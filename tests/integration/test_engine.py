"""The streaming engine against brute force, on real (tiny and embedded) models.

Each indexed model is compared, for every site and every feature, with a brute-force pass
that keeps every activation of every token: top-k values and positions, stats, quantile
edges (fine-bin quantiles of all tokens) and bin counts, sampled examples, and finalize windows.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers.brute import fine_quantile_bands, recorded, reference, top_k
from helpers.configs import base_config
from indexer.api import Index
from indexer.config import parse_sites
from indexer.run.engine import index
from indexer.forward.sites import HEAD_METRICS

MODELS = ["tiny-2l", "tiny-solu", "hf-gpt2", "toy-1l", "toy-1l-solu", "toy-2l"]
# GELU models index mlp_post + heads by default; these also index mlp_pre (SoLU models index
# mlp_pre, mlp_mid and mlp_post by default), so every site is compared with brute force.
WITH_MLP_PRE = {"tiny-2l": "mlp_pre,mlp_post,heads", "hf-gpt2": "all", "toy-2l": "heads,mlp_pre"}
HEAD_TOL = dict(rtol=1e-4, atol=1e-5)  # head metrics: the engine uses a Gram-matrix shortcut


@pytest.fixture(scope="module", params=MODELS)
def indexed(request, tmp_path_factory, tiny_model_dir, tiny_solu_dir, hf_model_dir):
    local = {"tiny-2l": tiny_model_dir, "tiny-solu": tiny_solu_dir, "hf-gpt2": hf_model_dir}
    model = str(local.get(request.param, request.param))
    sites = parse_sites(WITH_MLP_PRE[request.param]) if request.param in WITH_MLP_PRE else None
    cfg = base_config(model, str(tmp_path_factory.mktemp("idx") / request.param), sites=sites)
    index(cfg, progress=False)
    return cfg, Index.open(cfg.out), reference(cfg)


def site_frames(ix: Index, site):
    """(stats, examples) of one site, with a 'feature' column in both."""
    if site.name == "heads":
        stats = ix.sql("SELECT * FROM heads WHERE layer = ?", [site.layer])
        examples = ix.sql("SELECT * FROM head_examples WHERE layer = ?", [site.layer])
        for df in (stats, examples):
            df["feature"] = df["head"] * len(HEAD_METRICS) + df["metric"].map(HEAD_METRICS.index)
    else:
        stats = ix.sql("SELECT * FROM neurons WHERE site = ? AND layer = ?", [site.name, site.layer])
        examples = ix.sql("SELECT * FROM examples WHERE site = ? AND layer = ?", [site.name, site.layer])
        for df in (stats, examples):
            df["feature"] = df["neuron"]
    return stats.sort_values("feature").reset_index(drop=True), examples


def test_every_site_is_indexed(indexed):
    cfg, ix, ref = indexed
    names = {(s["name"], s["layer"]) for s in ix.manifest["sites"]}
    assert names == {(s.name, s.layer) for s in ref.plan}
    assert any(s.name == "heads" for s in ref.plan)
    planned = {s.name for s in ref.plan}
    if "solu" in cfg.model:  # the default for SoLU models: all three MLP sites
        assert planned == {"heads", "mlp_pre", "mlp_mid", "mlp_post"}
    elif cfg.sites is None:  # the default for GELU models
        assert planned == {"heads", "mlp_post"}
    else:
        assert "mlp_pre" in planned and "mlp_mid" not in planned
    assert ix.manifest["status"] == "complete" and ix.manifest["counts"]["tokens"] == cfg.tokens


def test_top_k_equals_brute_force(indexed):
    cfg, ix, ref = indexed
    for site in ref.plan:
        _, examples = site_frames(ix, site)
        top = examples[examples["kind"] == "top"]
        for feature in range(site.n_features):
            got = top[top["feature"] == feature].sort_values("rank")
            want = top_k(ref, site.key, feature, cfg.top_k)
            assert len(got) == len(want)
            if site.name == "heads":
                np.testing.assert_allclose(got["activation"], [w[0] for w in want], **HEAD_TOL)
            else:  # bit-identical activations: values and places must match exactly
                assert list(got["activation"]) == [np.float32(w[0]) for w in want], (site.key, feature)
                assert list(zip(got["ctx_id"], got["pos"])) == [(w[1], w[2]) for w in want], (site.key, feature)
            assert len(set(got["ctx_id"])) == len(got)  # one example per context


def test_stats_equal_brute_force(indexed):
    _, ix, ref = indexed
    for site in ref.plan:
        stats, _ = site_frames(ix, site)
        values, _, _ = recorded(ref, site.key)
        tol = HEAD_TOL if site.name == "heads" else dict(rtol=1e-5, atol=1e-6)
        assert (stats["n_tokens"] == len(values)).all()
        np.testing.assert_allclose(stats["mean"], values.astype(np.float64).mean(0), **tol)
        np.testing.assert_allclose(stats["std"], values.astype(np.float64).std(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stats["min"], values.min(0), **tol)
        np.testing.assert_allclose(stats["max"], values.max(0), **tol)
        if site.name != "heads":
            np.testing.assert_array_equal(stats["frac_active"], (values > 0).mean(0))
        assert all(sum(h) == len(values) for h in stats["hist"])


def test_quantile_edges_and_bin_counts(indexed):
    """Edges are the fine-bin quantiles of ALL tokens (not a prefix); counts and shares exact."""
    cfg, ix, ref = indexed
    quantiles = list(cfg.quantiles)
    for site in ref.plan:
        stats, _ = site_frames(ix, site)
        values, _, _ = recorded(ref, site.key)
        edges = np.stack(stats["quantile_edges"].to_numpy())
        counts = np.stack(stats["bin_counts"].to_numpy())
        assert (counts.sum(1) == len(values)).all()
        np.testing.assert_allclose(np.stack(stats["bin_shares"].to_numpy()), counts / len(values))
        np.testing.assert_allclose(np.stack(stats["quantiles"].to_numpy()), np.float32([quantiles] * len(stats)))
        assert set(stats["bin_status"]) <= {"ok", "near_constant", "dead"}
        if site.name == "heads":  # a value within float noise of a fine-bin edge may bin either way
            bins = (values[:, :, None] >= edges[None].astype(np.float32)).sum(-1)
            brute = np.stack([(bins == b).sum(0) for b in range(len(quantiles) + 1)], axis=1)
            assert np.abs(brute - counts).sum() <= 0.001 * counts.sum() + 4
            continue
        _, want_edges, want_counts = fine_quantile_bands(values, quantiles)
        np.testing.assert_array_equal(edges, want_edges)
        np.testing.assert_array_equal(counts, want_counts)
        bins = (values[:, :, None] >= edges[None].astype(np.float32)).sum(-1)  # [token, feat]
        np.testing.assert_array_equal(counts, np.stack([(bins == b).sum(0) for b in range(len(quantiles) + 1)], axis=1))
        status = np.where((counts == 0).any(1), "near_constant", "ok")
        assert [s if s == "dead" else t for s, t in zip(stats["bin_status"], status)] == list(stats["bin_status"])


def test_samples_lie_in_their_bins(indexed):
    cfg, ix, ref = indexed
    for site in ref.plan:
        stats, examples = site_frames(ix, site)
        samples = examples[examples["kind"] == "quantile"]
        acts = dict(zip(ref.ctx_ids, ref.acts[site.key]))
        edges = np.stack(stats["quantile_edges"].to_numpy())
        counts = np.stack(stats["bin_counts"].to_numpy())
        for row in samples.itertuples():
            true = acts[row.ctx_id][row.pos, row.feature]
            if site.name == "heads":
                np.testing.assert_allclose(row.activation, true, **HEAD_TOL)
            else:
                assert row.activation == true
                assert (row.activation >= edges[row.feature]).sum() == row.bin
        per_bin = samples.groupby(["feature", "bin"]).size()
        for (feature, b), n in per_bin.items():
            assert n <= min(cfg.per_bin, counts[feature, b])
        # A bin gets min(per_bin, count) samples unless it ended far below its nominal share
        # (beside a fine bin holding much of it): then the kept tokens under its threshold are
        # fewer, a smaller uniform sample (keep_rule.py). Rare even on these small indexes.
        want = np.minimum(counts, cfg.per_bin).sum()
        assert want * 0.97 <= per_bin.sum() <= want, (per_bin.sum(), want)
        assert not samples.duplicated(["feature", "ctx_id", "pos"]).any()


def test_windows_match_a_fresh_forward_pass(indexed):
    cfg, ix, ref = indexed
    position = {ctx_id: i for i, ctx_id in enumerate(ref.ctx_ids)}
    for site in ref.plan:
        _, examples = site_frames(ix, site)
        for row in examples.itertuples():
            i = position[row.ctx_id]
            tokens, acts = ref.tokens[i], ref.acts[site.key][i]
            start, stop = max(0, row.pos - cfg.window_before), min(len(tokens), row.pos + cfg.window_after + 1)
            assert row.window_start == start
            assert list(row.window_token_ids) == tokens[start:stop].tolist()
            np.testing.assert_allclose(row.window_acts, acts[start:stop, row.feature], rtol=1e-4, atol=1e-5)
            assert row.token_id == tokens[row.pos]


def test_contexts_and_vocab_tables(indexed):
    cfg, ix, ref = indexed
    contexts = ix.sql("SELECT ctx_id, corpus, token_ids FROM contexts")
    by_id = dict(zip(ref.ctx_ids, ref.tokens))
    for row in contexts.itertuples():
        assert list(row.token_ids) == by_id[row.ctx_id].tolist()
    used = ix.sql("SELECT DISTINCT ctx_id FROM examples UNION SELECT DISTINCT ctx_id FROM head_examples")
    assert set(used["ctx_id"]) == set(contexts["ctx_id"])  # store-contexts=kept: exactly the used ones
    sample = ix.sql("SELECT e.token_str, v.token_str AS vocab_str FROM examples e JOIN vocab v ON v.token_id = e.token_id LIMIT 50")
    assert (sample["token_str"] == sample["vocab_str"]).all()


def test_mlp_sites_are_what_they_claim(indexed):
    """mlp_pre is the activation function's input, mlp_mid its output (SoLU, before the
    LayerNorm), mlp_post the neurons: each follows from the one before by the model's maths."""
    import torch

    from indexer.inputs.models import load_model

    cfg, _, ref = indexed
    model = load_model(cfg.model)
    act_fn = model.info.act_fn
    for site in ref.plan:
        if site.name != "mlp_pre":
            continue
        pre = torch.from_numpy(np.concatenate(ref.acts[site.key]))
        after = {s.name: np.concatenate(ref.acts[s.key]) for s in ref.plan if s.layer == site.layer}
        if act_fn.startswith("solu"):
            mid = (pre * torch.softmax(pre, dim=-1)).numpy()
            np.testing.assert_allclose(after["mlp_mid"], mid, rtol=1e-5, atol=1e-6)
            ln = model.bridge.blocks[site.layer].mlp.ln._original_component  # a torch LayerNorm
            normed = torch.nn.functional.layer_norm(torch.from_numpy(after["mlp_mid"]), ln.normalized_shape,
                                                   ln.weight.detach(), ln.bias.detach(), eps=ln.eps).numpy()
            np.testing.assert_allclose(after["mlp_post"], normed, rtol=1e-4, atol=1e-4)
        elif "mlp_post" in after:
            approximate = "tanh" if act_fn in ("gelu_new", "gelu_pytorch_tanh") else "none"
            post = torch.nn.functional.gelu(pre, approximate=approximate).numpy()
            np.testing.assert_allclose(after["mlp_post"], post, rtol=1e-5, atol=1e-6)
        # the engine's hook is an alias of the canonical pre-activation hook
        assert model.bridge.hook_dict[site.hook_names()[0]].name == f"blocks.{site.layer}.mlp.in.hook_out"
