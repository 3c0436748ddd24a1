"""sparsify folders written by EleutherAI's own library (eai-sparsify, a test dependency,
also the extra ``.[sae-reference]``) index to exactly what its ``SparseCoder.encode`` gives:
a top-k SAE on a block's output and a groupmax transcoder reading an MLP's input."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.configs import base_config
from helpers.indexes import tables
from helpers.saes import hooked_activations, max_rel_err

import sparsify  # noqa: E402  (a test dependency: a missing one fails, never skips)

TOL = 1e-5
# folder (the hookpoint, an HF module name) -> (config, the bridge's canonical hook it must read)
CODERS = {
    "layers.1": (dict(num_latents=64, k=5), "blocks.1.hook_out"),
    "layers.0.mlp": (dict(num_latents=64, k=8, activation="groupmax", transcode=True), "blocks.0.mlp.hook_in"),
}


@pytest.fixture(scope="module")
def indexed(tiny_model_dir, tmp_path_factory):
    import torch

    from indexer.run.engine import index

    root = tmp_path_factory.mktemp("sparsify")
    coders, specs = {}, []
    for i, (hookpoint, (cfg, _)) in enumerate(CODERS.items()):
        torch.manual_seed(i)
        coder = sparsify.SparseCoder(32, sparsify.SparseCoderConfig(**cfg))
        with torch.no_grad():
            coder.encoder.bias.normal_(0, 0.2)  # the library initialises it to zero
            coder.b_dec.normal_(0, 0.05)
        coder.save_to_disk(root / f"c{i}" / hookpoint)
        coders[f"c{i}"] = (sparsify.SparseCoder.load_from_disk(root / f"c{i}" / hookpoint), CODERS[hookpoint][1])
        specs.append(f"c{i}={root / f'c{i}' / hookpoint}")
    out = tmp_path_factory.mktemp("ix") / "ix"
    cfg = base_config(str(tiny_model_dir), str(out), sites=("mlp_post",), tokens=1200, sae=specs)
    index(cfg, progress=False)
    ctx_ids, _, acts = hooked_activations(cfg, sorted({hook for _, hook in coders.values()}))
    return tables(str(out)), coders, ctx_ids, acts


@pytest.mark.parametrize("name", ["c0", "c1"])
def test_latents_equal_sparsify_encode(indexed, name):
    import torch

    t, coders, ctx_ids, acts = indexed
    coder, hook = coders[name]
    ref = {}
    for ctx_id, x in zip(ctx_ids, acts[hook]):
        with torch.no_grad():
            out = coder.encode(torch.from_numpy(x))
        dense = torch.zeros(len(x), coder.num_latents).scatter_(-1, out.top_indices, out.top_acts)
        ref[ctx_id] = dense.numpy()
    ex = t["examples"][t["examples"].site == f"sae:{name}"]
    assert len(ex) > 0
    got, want = [], []
    for row in ex.itertuples():
        span = np.arange(row.window_start, row.window_start + len(row.window_acts))
        got += [row.activation, *row.window_acts]
        want += [ref[row.ctx_id][row.pos, row.neuron], *ref[row.ctx_id][span, row.neuron]]
    err = max_rel_err(got, want)
    print(f"{name}: max relative error vs sparsify {err:.2e} over {len(got)} values")
    assert err <= TOL
