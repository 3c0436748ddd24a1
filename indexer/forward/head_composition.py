"""Composition scores between heads of different layers, from the weights alone.

As in "A Mathematical Framework for Transformer Circuits" (Elhage et al., 2021). With TL's
row-vector convention (a residual vector ``x`` is a row; a head reads ``x W``):

- ``W_OV^h = W_V^h W_O^h``   [d_model, d_model]: what head h writes given what it reads;
- ``W_QK^h = W_Q^h W_K^hᵀ`` [d_model, d_model]: attention logit ``x_dst W_QK x_srcᵀ``.

For a head ``a`` in an earlier layer and a head ``b`` in a later one:

- Q-composition (a's output read by b's queries): ``‖W_OV^a W_QK^b‖_F / (‖W_OV^a‖_F ‖W_QK^b‖_F)``
- K-composition (a's output read by b's keys):    ``‖W_OV^a W_QK^bᵀ‖_F / (‖W_OV^a‖_F ‖W_QK^b‖_F)``
- V-composition (a's output read by b's values):  ``‖W_OV^a W_OV^b‖_F / (‖W_OV^a‖_F ‖W_OV^b‖_F)``

(the paper writes them column-wise, e.g. ``‖W_QK^{bᵀ} W_OV^a‖``; Frobenius norms do not see
the transposes.) Each score is in [0, 1]; two unrelated random heads score about
``1/√d_model``. LayerNorm scales and biases are ignored, as in the paper.

Nothing d_model × d_model is formed: with ``A = U₁V₁`` and ``B = U₂V₂`` (U: d_model × d_head,
V: d_head × d_model), ``‖AB‖²_F = tr(G₁ M G₂ Mᵀ)`` where ``G₁ = U₁ᵀU₁``, ``G₂ = V₂V₂ᵀ`` and
``M = V₁U₂`` are d_head × d_head, so a pair costs O(d_head² d_model).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

KINDS = ("q", "k", "v")


def head_weights(bridge: Any, layer: int) -> dict[str, torch.Tensor]:
    """W_Q, W_K, W_V [head, d_model, d_head] and W_O [head, d_head, d_model] in float64, with
    grouped key/value heads repeated to one per query head."""
    attn = bridge.blocks[layer].attn
    out = {name: getattr(attn, name).detach().to(torch.float64).cpu() for name in ("W_Q", "W_K", "W_V", "W_O")}
    n_heads = out["W_Q"].shape[0]
    for name in ("W_K", "W_V"):
        if out[name].shape[0] != n_heads:
            out[name] = out[name].repeat_interleave(n_heads // out[name].shape[0], dim=0)
    return out


def _sq_norm_products(u1: torch.Tensor, v1: torch.Tensor, u2: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """‖(U₁V₁)_a (U₂V₂)_b‖²_F for every head pair: u1 [A, m, d], v1 [A, d, m], u2 [B, m, e], v2 [B, e, m] -> [A, B]."""
    g1 = torch.einsum("amd,ame->ade", u1, u1)
    g2 = torch.einsum("bem,bfm->bef", v2, v2)
    m = torch.einsum("adm,bme->abde", v1, u2)
    return torch.einsum("ade,abef,bfg,abdg->ab", g1, m, g2, m).clamp_min(0)


def _sq_norm(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """‖U_h V_h‖²_F per head = tr(UᵀU VVᵀ): u [H, m, d], v [H, d, m] -> [H]."""
    return torch.einsum("hde,hed->h", torch.einsum("hmd,hme->hde", u, u), torch.einsum("hdm,hem->hde", v, v))


def composition_scores(bridge: Any, layers: list[int]) -> dict[str, np.ndarray]:
    """Columns of the head_composition table: every (earlier head, later head, kind)."""
    w = {layer: head_weights(bridge, layer) for layer in layers}
    ov_norm = {l: _sq_norm(w[l]["W_V"], w[l]["W_O"]).sqrt() for l in layers}
    qk_norm = {l: _sq_norm(w[l]["W_Q"], w[l]["W_K"].transpose(1, 2)).sqrt() for l in layers}
    cols: dict[str, list] = {"layer_a": [], "head_a": [], "layer_b": [], "head_b": [], "kind": [], "score": []}
    for la in layers:
        for lb in layers:
            if lb <= la:
                continue
            a, b = w[la], w[lb]
            products = {
                "q": (_sq_norm_products(a["W_V"], a["W_O"], b["W_Q"], b["W_K"].transpose(1, 2)), qk_norm[lb]),
                "k": (_sq_norm_products(a["W_V"], a["W_O"], b["W_K"], b["W_Q"].transpose(1, 2)), qk_norm[lb]),
                "v": (_sq_norm_products(a["W_V"], a["W_O"], b["W_V"], b["W_O"]), ov_norm[lb]),
            }
            for kind, (sq, norm_b) in products.items():
                denom = ov_norm[la][:, None] * norm_b[None, :]
                score = torch.where(denom > 0, sq.sqrt() / denom.clamp_min(1e-300), torch.zeros_like(denom))
                n_a, n_b = score.shape
                cols["layer_a"] += [la] * (n_a * n_b)
                cols["head_a"] += np.repeat(np.arange(n_a), n_b).tolist()
                cols["layer_b"] += [lb] * (n_a * n_b)
                cols["head_b"] += np.tile(np.arange(n_b), n_a).tolist()
                cols["kind"] += [kind] * (n_a * n_b)
                cols["score"] += score.reshape(-1).tolist()
    ints = ("layer_a", "head_a", "layer_b", "head_b")
    return {k: np.asarray(v, np.int32 if k in ints else (object if k == "kind" else np.float32)) for k, v in cols.items()}
