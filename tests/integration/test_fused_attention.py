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
