"""Direct logit effects for every final norm of the matrix (LayerNorm, RMSNorm, Gemma's
(1 + w) RMSNorm, tied embeddings, Gemma 2's soft-capped logits), against the logit change of
a push along the neuron's output direction in plain ``transformers`` (float64, eager).

The direct logit effect holds the final norm's per-token scale fixed (TransformerLens's
convention: it changes no ranking). A push that leaves that scale unchanged to first order
is one orthogonal to what the norm reads: the neuron's output direction minus its component
along the (centred, for LayerNorm) residual and, for LayerNorm, minus its mean. For such a
push u, the model's pre-cap logits move by eps / scale * (u @ W_U'), W_U' being the folded,
vocab-centred unembedding the analysis uses; the analysis's effect row of neuron n must be
centred(W_out[n]) @ W_U' with W_out[n] read from the model's own output projection (for a
mixture of experts, the neuron's row of its expert's down projection: the router weight scales
it by a positive factor).
"""

from __future__ import annotations

import pytest
import torch

from helpers import hf_archs
from indexer.analyses.logits import effects, folded_unembed
from indexer.inputs.models import load_model

TOLERANCE = 1e-4  # a central difference through norms that compute in float32 (Llama-style RMSNorm casts)
TOKENS = [0, 812, 27, 1013, 8, 413, 63, 29, 302, 27, 140]  # any ids: the model is random


@pytest.mark.parametrize("name", list(hf_archs.ARCHS))
def test_logit_effect_is_the_logit_change_of_a_push(name, tmp_path):
    folder = hf_archs.build(name, tmp_path / name)
    model = hf_archs.load_eager(folder).double()
    bridge = load_model(str(folder)).bridge
    with torch.inference_mode():
        w_u, _ = folded_unembed(bridge)  # [d_model, vocab], what the analysis folds
        w_u = w_u.double()
        layernorm = "LayerNorm" in type(dict(model.named_modules())[hf_archs.ARCHS[name].final_norm]).__name__
        for layer in range(hf_archs.N_LAYERS):
            table = effects(bridge, layer).double()  # [d_mlp, vocab]
            moe = ((70,) if hf_archs.ARCHS[name].experts else ()) + ((130,) if hf_archs.ARCHS[name].shared else ())
            for neuron in (0, 5, 17) + moe:  # 70: expert 2; 130: the shared expert's neuron 2
                v = hf_archs.output_direction(model, name, layer, neuron).double()
                want_row = (v - v.mean() if layernorm else v) @ w_u
                assert torch.allclose(table[neuron], want_row, rtol=0, atol=1e-5 * want_row.abs().max())
                got = _push(model, name, v, layernorm)
                want = got["u"] @ w_u
                scale = (got["delta"] @ want) / (want @ want)  # eps / the norm's per-token scale: positive
                error = float((got["delta"] - scale * want).abs().max() / (scale * want).abs().max())
                print(name, layer, neuron, "relative error", error)
                assert scale > 0 and error <= TOLERANCE, (layer, neuron, error)


def _push(model, name: str, v: torch.Tensor, layernorm: bool) -> dict[str, torch.Tensor]:
    """The vocab-centred change of the pre-cap logits at the last position when eps * u is added
    to the final norm's input there, u being v made invisible to the norm's scale."""
    modules = dict(model.named_modules())
    norm, head = modules[hf_archs.ARCHS[name].final_norm], modules["lm_head"]
    seen: dict[str, torch.Tensor] = {}
    state = {"push": None}

    def read_and_push(module, args):
        x = args[0]
        seen.setdefault("x", x[0, -1].clone())
        if state["push"] is not None:
            x = x.clone()
            x[0, -1] += state["push"]
            return (x, *args[1:])
        return None

    def logits(module, args, out):
        seen["z"] = out[0, -1].clone()

    handles = [norm.register_forward_pre_hook(read_and_push), head.register_forward_hook(logits)]
    try:
        with torch.no_grad():
            model(torch.tensor([TOKENS]))
            base, x = seen["z"], seen["x"]
            u = v - v.mean() if layernorm else v.clone()
            xc = x - x.mean() if layernorm else x
            u = u - (u @ xc) / (xc @ xc) * xc
            eps = 1e-3 * x.norm() / u.norm()  # RMSNorms compute in float32: a push well above its rounding
            changes = []
            for sign in (1, -1):  # a central difference: no second-order term
                state["push"] = sign * eps * u
                model(torch.tensor([TOKENS]))
                changes.append(seen["z"] - base)
    finally:
        for h in handles:
            h.remove()
    delta = (changes[0] - changes[1]) / 2
    return {"delta": delta - delta.mean(), "u": u}
