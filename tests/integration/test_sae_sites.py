"""SAE and transcoder latents as sites (`--sae`): every architecture and format, indexed in one
run on a tiny random model, against the encode formulas applied by brute force (float64
numpy, tests/helpers/saes.py) to the activation of the hook each SAE names, read here through
the bridge's canonical hook names (mapped by hand below, not by the code under test).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.configs import base_config
from helpers.indexes import tables
from helpers.saes import hooked_activations, max_rel_err, reference_encode, write_saelens, write_sparsify

TOL = 1e-5  # max relative error in float32 (the target)
D_MODEL, D_MLP = 32, 64  # helpers.models.TINY_CONFIG

# name -> (writer, kwargs, the bridge's canonical hook the latents must read)
SAES = {
    "std": ("saelens", dict(arch="standard", hook="blocks.0.hook_resid_pre", d_in=D_MODEL, d_sae=48), "blocks.0.hook_in"),
    "gated": ("saelens", dict(arch="gated", hook="blocks.1.hook_resid_mid", d_in=D_MODEL, d_sae=40), "blocks.1.ln2.hook_in"),
    "jump": ("saelens", dict(arch="jumprelu", hook="blocks.0.mlp.hook_post", d_in=D_MLP, d_sae=96), "blocks.0.mlp.out.hook_in"),
    "topk": ("saelens", dict(arch="topk", hook="blocks.1.hook_mlp_out", d_in=D_MODEL, d_sae=64, k=6), "blocks.1.mlp.hook_out"),
    "topk_old": ("saelens", dict(arch="topk", hook="blocks.0.hook_resid_post", d_in=D_MODEL, d_sae=32, k=4, old_names=True),
                 "blocks.0.hook_out"),
    "lnorm": ("saelens", dict(arch="standard", hook="blocks.1.hook_resid_post", d_in=D_MODEL, d_sae=32,
                              normalize_activations="layer_norm"), "blocks.1.hook_out"),
    "zrescale": ("saelens", dict(arch="standard", hook="blocks.0.attn.hook_z", d_in=D_MODEL, d_sae=32,
                                 normalize_activations="constant_norm_rescale", reshape_activations="hook_z"),
                 "blocks.0.attn.o.hook_in"),
    "tc": ("saelens", dict(arch="jumprelu_skip_transcoder", hook="blocks.0.ln2.hook_normalized", d_in=D_MODEL, d_sae=48,
                           d_out=D_MODEL, hook_name_out="blocks.0.hook_mlp_out"), "blocks.0.ln2.hook_normalized"),
    "tc_plain": ("saelens", dict(arch="transcoder", hook="blocks.1.mlp.hook_in", d_in=D_MODEL, d_sae=40, d_out=D_MODEL),
                 "blocks.1.mlp.hook_in"),
    "spx": ("sparsify", dict(folder="layers.1", d_in=D_MODEL, d_sae=64, k=5), "blocks.1.hook_out"),
    "spx_tc": ("sparsify", dict(folder="layers.0.mlp", d_in=D_MODEL, d_sae=48, k=5, transcode=True), "blocks.0.mlp.hook_in"),
}


def write_sae(root: Path, name: str) -> Path:
    kind, kwargs, _ = SAES[name]
    kwargs = dict(kwargs)
    if kind == "sparsify":
        return write_sparsify(root / name / kwargs.pop("folder"), seed=len(name), **kwargs)
    arch, hook, d_in, d_sae = (kwargs.pop(k) for k in ("arch", "hook", "d_in", "d_sae"))
    return write_saelens(root / name, arch, hook, d_in, d_sae, seed=len(name), **kwargs)


@pytest.fixture(scope="module")
def indexed(tiny_model_dir, tmp_path_factory):
    from indexer.run.engine import index

    root = tmp_path_factory.mktemp("saes")
    folders = {name: write_sae(root, name) for name in SAES}
    out = tmp_path_factory.mktemp("ix") / "ix"
    cfg = base_config(str(tiny_model_dir), str(out), sites=("mlp_post",), tokens=1500,
                      sae=[f"{name}={folder}" for name, folder in folders.items()])
    index(cfg, progress=False)
    hooks = sorted({canonical for _, _, canonical in SAES.values()} | {"blocks.0.mlp.hook_out"})
    ctx_ids, tokens, acts = hooked_activations(cfg, hooks)
    return out, folders, ctx_ids, acts


def _reference(indexed, name: str, hook: str | None = None):
    """Per context: latents [len, d_sae] and ambiguous [len, d_sae] from the formulas."""
    _, folders, ctx_ids, acts = indexed
    hook = hook or SAES[name][2]
    refs = [reference_encode(folders[name], a) for a in acts[hook]]
    return dict(zip(ctx_ids, refs))


@pytest.mark.parametrize("name", list(SAES))
def test_latents_equal_the_formula(indexed, name):
    """Every example value and window value in the index equals the brute-force encode of the
    activation at the hook the SAE names, to 1e-5 relative; top-k and max agree too."""
    out, _, _, _ = indexed
    ref = _reference(indexed, name)
    t = tables(str(out))
    ex = t["examples"][t["examples"].site == f"sae:{name}"]
    assert len(ex) > 0
    got, want, skipped = [], [], 0
    for row in ex.itertuples():
        latents, ambiguous = ref[row.ctx_id]
        span = np.arange(row.window_start, row.window_start + len(row.window_acts))
        if ambiguous[span, row.neuron].any():
            skipped += 1
            continue
        got += [row.activation, *row.window_acts]
        want += [latents[row.pos, row.neuron], *latents[span, row.neuron]]
    assert skipped <= len(ex) // 10
    err = max_rel_err(got, want)
    print(f"{name}: max relative error {err:.2e} over {len(got)} values ({skipped} ambiguous examples skipped)")
    assert err <= TOL, f"{name}: max relative error {err:.2e}"
    # top-k: each latent's top values are the k best contexts of the brute force
    neurons = t["neurons"][t["neurons"].site == f"sae:{name}"].set_index("neuron")
    top = ex[ex.kind == "top"]
    for latent, rows in top.groupby("neuron"):
        best = sorted((max(lat[1:, latent]) for lat, _ in ref.values()), reverse=True)[: len(rows)]
        assert max_rel_err(sorted(rows.activation, reverse=True), best) <= TOL
        every = np.concatenate([lat[1:, latent] for lat, _ in ref.values()])
        assert abs(neurons.loc[latent, "max"] - every.max()) <= TOL * abs(every.max())


def test_transcoder_reads_its_input_hook(indexed):
    """The transcoder's latents come from its hook_name (ln2.hook_normalized), not from the
    output it predicts (hook_mlp_out), which has the same width."""
    out, _, _, _ = indexed
    t = tables(str(out))
    ex = t["examples"][(t["examples"].site == "sae:tc") & (t["examples"].kind == "top")]
    wrong = _reference(indexed, "tc", hook="blocks.0.mlp.hook_out")
    right = _reference(indexed, "tc")
    got = ex.activation.to_numpy()
    assert max_rel_err(got, [right[c][0][p, n] for c, p, n in zip(ex.ctx_id, ex.pos, ex.neuron)]) <= TOL
    assert max_rel_err(got, [wrong[c][0][p, n] for c, p, n in zip(ex.ctx_id, ex.pos, ex.neuron)]) > 1e-2


def test_manifest_records_each_sae(indexed):
    import hashlib

    out, folders, _, _ = indexed
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {e["name"]: e for e in manifest["saes"]}
    assert set(entries) == set(SAES)
    for name, folder in folders.items():
        e = entries[name]
        weights = next(folder.glob("*.safetensors"))
        assert e["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        assert e["format"] == ("sparsify" if SAES[name][0] == "sparsify" else "saelens")
        assert e["d_sae"] == SAES[name][1]["d_sae"]
    assert entries["topk_old"]["architecture"] == "topk" and entries["topk_old"]["hook"] == "blocks.0.hook_resid_post"
    assert entries["tc"]["hook_out"] == "blocks.0.hook_mlp_out" and entries["tc"]["transcoder"]
    sites = {s["name"]: s for s in manifest["sites"]}
    assert sites["sae:jump"] == {"name": "sae:jump", "layer": 0, "n_features": 96}
    assert sites["sae:spx"]["layer"] == 1


@pytest.mark.parametrize("name", ["std", "topk", "spx"])
def test_zero_mass_is_counted_not_sampled(indexed, name):
    """A latent's zeros are counted (n_tokens is every token, the histogram's zero bin holds
    them, frac_active is the firing share) but not binned or sampled: the quantile bins
    partition the tokens where the latent fires, and no example sits on a zero."""
    from indexer.recorders.histogram import ZERO_BIN

    out = indexed[0]
    ref = _reference(indexed, name)
    t = tables(str(out))
    neurons = t["neurons"][t["neurons"].site == f"sae:{name}"].set_index("neuron")
    ex = t["examples"][t["examples"].site == f"sae:{name}"]
    every = np.concatenate([lat[1:] for lat, _ in ref.values()])  # [tokens, d_sae]
    unsure = np.concatenate([amb[1:] for _, amb in ref.values()])
    assert (neurons.n_tokens == len(every)).all()
    assert (ex.activation != 0).all() and len(ex[ex.kind == "quantile"]) > 0
    firing_somewhere = 0
    for latent, row in neurons.iterrows():
        fires = int((every[:, latent] != 0).sum())
        slack = int(unsure[:, latent].sum())  # tokens whose sign float rounding may flip
        assert abs(int(np.sum(row.bin_counts)) - fires) <= slack
        assert int(np.sum(row["hist"])) == len(every)
        assert int(row["hist"][ZERO_BIN]) >= len(every) - int(np.sum(row.bin_counts))
        assert abs(row.frac_active * len(every) - (every[:, latent] > 0).sum()) <= slack + 1e-6
        firing_somewhere += fires > 0
    assert 0 < firing_somewhere and (neurons.frac_active < 0.9).any()  # sparse: zeros are most tokens
