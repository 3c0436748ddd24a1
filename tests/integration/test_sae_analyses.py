"""Analyses on SAE latents: logit effects of latents (W_dec · W_U with the final norm folded),
links between latents and neurons, and the analyses that re-run the model (minimal examples)
reaching the latents through the SAE named in the manifest."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.configs import base_config
from helpers.saes import read_folder, write_saelens


@pytest.fixture(scope="module")
def analysed(tiny_model_dir, tmp_path_factory):
    from indexer.analyses.common import Options
    from indexer.analyses.runner import analyze
    from indexer.run.engine import index

    root = tmp_path_factory.mktemp("saes")
    folders = {"out": write_saelens(root / "out", "topk", "blocks.1.hook_mlp_out", 32, 48, k=4, seed=1),
               "post": write_saelens(root / "post", "jumprelu", "blocks.0.mlp.hook_post", 64, 40, seed=2)}
    out = tmp_path_factory.mktemp("ix") / "ix"
    index(base_config(str(tiny_model_dir), str(out), sites=("mlp_post",), tokens=800,
                      sae=[f"{n}={f}" for n, f in folders.items()]), progress=False)
    analyze(out, only="latents,minimal", options=Options(device="cpu", progress=False, top_ranks=2))
    from indexer.api import Index

    with Index.open(out) as ix:
        found = {name: ix.sql(f"SELECT * FROM {name}")
                 for name in ("latent_logit_effects", "latent_neurons", "minimal_examples")}
    return out, folders, found


def _model_weights(model_dir):
    from indexer.inputs.models import load_model

    bridge = load_model(str(model_dir)).bridge
    return {"W_U": bridge.W_U.detach().numpy().astype(np.float64),
            "ln_w": bridge.ln_final.w.detach().numpy().astype(np.float64),
            "W_out": [bridge.blocks[i].mlp.W_out.detach().numpy().astype(np.float64) for i in range(2)]}


def test_latent_logit_effects(analysed, tiny_model_dir):
    """up/down tokens of every latent: centred W_dec[i] @ (diag(ln_final.w) W_U), centred over
    the vocab, computed here in float64 from the files."""
    out, folders, t = analysed
    w = _model_weights(tiny_model_dir)
    _, sae = read_folder(folders["out"])
    dec = sae["W_dec"] - sae["W_dec"].mean(1, keepdims=True)  # LayerNorm model: writers centred
    w_u = w["ln_w"][:, None] * w["W_U"]
    eff = dec @ (w_u - w_u.mean(1, keepdims=True))  # [d_sae, vocab]
    rows = t["latent_logit_effects"]
    mine = rows[rows.site == "sae:out"]
    assert len(mine) == 48 * 2 * 10
    for latent in (0, 17, 47):
        up = mine[(mine.neuron == latent) & (mine.direction == "up")].sort_values("rank")
        assert list(up.token_id) == list(np.argsort(-eff[latent])[:10])
        assert np.allclose(up.value, np.sort(eff[latent])[::-1][:10], rtol=1e-4, atol=1e-6)
    assert not (rows.site == "sae:post").any()  # it reconstructs neuron activations, not the residual


def test_latent_neuron_links(analysed, tiny_model_dir):
    out, folders, t = analysed
    links = t["latent_neurons"]
    _, post = read_folder(folders["post"])
    reads = links[(links.sae_site == "sae:post") & (links.role == "reads")]
    assert len(reads) and set(reads.site) == {"mlp_post"} and set(reads.layer) == {0}
    assert np.allclose(reads.weight, post["W_enc"][reads.neuron, reads.latent], rtol=1e-6)
    # each latent's 10 neurons of largest |W_enc| are there, ranked
    top = reads[reads.rank_in_latent < 10]
    for latent in (0, 39):
        want = np.argsort(-np.abs(post["W_enc"][:, latent]))[:10]
        assert list(top[top.latent == latent].sort_values("rank_in_latent").neuron) == list(want)
    w_out = _model_weights(tiny_model_dir)["W_out"][1]
    _, res = read_folder(folders["out"])
    via = links[(links.sae_site == "sae:out") & (links.role == "reads")]
    assert set(via.layer) == {1}
    assert np.allclose(via.weight, (w_out @ res["W_enc"])[via.neuron, via.latent], rtol=1e-4, atol=1e-6)


def test_minimal_examples_run_on_latents(analysed):
    """minimal re-runs the model on cut contexts: the latents come from the SAEs the manifest names."""
    _, _, t = analysed
    mine = t["minimal_examples"]
    assert {"sae:out", "sae:post"} <= set(mine.site)
    assert (mine[mine.site.str.startswith("sae:")].kept_fraction >= 0.5 - 1e-6).all()
