"""Fused attention (indexer/forward/fast_attention.py): swapped in only where no site reads the
pattern, and the MLP values it gives equal the model's own transformers forward."""

from __future__ import annotations

import numpy as np
import torch

from indexer.forward.fast_attention import use_fused_attention
from indexer.forward.sites import plan_sites
from indexer.inputs.models import load_model

from helpers.hf_archs import N_LAYERS, build, load_eager, reference


def test_fused_attention_only_where_no_site_reads_the_pattern(tmp_path):
    folder = build("gpt2", tmp_path / "gpt2")
    model = load_model(str(folder))
    heads_too = plan_sites(model.info, ("mlp_post", "heads"), (0,))
    assert use_fused_attention(model.bridge, heads_too) == list(range(1, N_LAYERS))  # layer 0's heads read it
    model = load_model(str(folder))
    plan = plan_sites(model.info, ("mlp_post",))
    assert use_fused_attention(model.bridge, plan) == list(range(N_LAYERS))
    tokens = list(range(1, 40))
    got = {}
    hooks = [(f"blocks.{L}.mlp.hook_post", lambda t, hook, L=L: got.__setitem__(L, t[0].detach().numpy()))
             for L in range(N_LAYERS)]
    for block in model.bridge.blocks:
        block.attn._pattern = None  # (left by the loader's two-token probe)
    with torch.no_grad():
        model.bridge.run_with_hooks(torch.tensor([tokens]), fwd_hooks=hooks)
    want = reference(load_eager(folder), "gpt2", tokens)
    for layer in range(N_LAYERS):
        ref = want[("mlp_post", layer)]
        err = np.abs(got[layer] - ref).max() / np.abs(ref).max()
        assert err <= 1e-5, (layer, err)
    assert all(getattr(block.attn, "_pattern", None) is None for block in model.bridge.blocks)  # no pattern made


def test_the_analyses_run_the_attention_the_index_ran(tmp_path):
    """An MLP-only index ran fused attention in every layer, so its analyses do too; an index
    of every layer's heads ran none. Either way the analyses' values at the top examples are
    the index's own (the cut that keeps the whole prefix keeps the whole activation)."""
    from indexer import cli
    from indexer.analyses.common import IndexContext, Options, Reads

    folder = build("gpt2", tmp_path / "gpt2")
    for sites, fused in (("mlp_post", list(range(N_LAYERS))), ("all", [])):
        out = tmp_path / sites
        assert cli.main(["index", "--model", str(folder), "--corpus", "code", "--out", str(out), "--tokens", "400",
                         "--ctx-len", "32", "--sites", sites, "--quiet"]) == 0
        ix = IndexContext(out, Options(device="cpu", progress=False))
        try:
            ex = ix.sql("SELECT site, layer, neuron, activation, ctx_id, pos FROM examples "
                        "WHERE kind = 'top' AND rank = 0 AND site = 'mlp_post'")
            contexts = ix.contexts(ex.ctx_id)
            reads = Reads()
            asked = [reads.ask((r.site, int(r.layer)), i, 1, int(r.neuron)) for i, r in enumerate(ex.itertuples())]
            acts = ix.last_token_acts([contexts[c][: p + 1] for c, p in zip(ex.ctx_id, ex.pos)], reads.pairs(), "t")
            assert ix._fused == fused
            got = np.array([Reads.of(acts, h)[0] for h in asked])
            assert np.abs(got - ex.activation.to_numpy()).max() <= 1e-5 * np.abs(ex.activation).max()
        finally:
            ix.close()
