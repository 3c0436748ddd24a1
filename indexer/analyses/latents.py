"""SAE latents: logit effects and links to the MLP neurons of their layer; random directions'
logit effects.

Logit effects (table ``latent_logit_effects``): for an SAE whose decoder writes into the
residual stream (it reconstructs hook_resid_pre/mid/post, hook_mlp_out or hook_attn_out, or is
a transcoder whose output is one of those), effect[i] = W_dec[i] @ W_U' with the final norm
folded exactly as for neurons (``analyses.logits.folded_unembed``; W_dec centred over d_model
for LayerNorm models): the direct path only, up to the positive per-token norm scale. A random
direction u of mlp_post (site ``random``) writes u @ W_out per unit of its value, so its effect
is (u @ W_out) @ W_U', folded the same way.

Links (table ``latent_neurons``), for an SAE on an MLP of layer L:
- on the neurons themselves (``blocks.L.mlp.hook_post``, d_in = d_mlp): reads[n, i] =
  W_enc[n, i]; writes[n, i] = W_dec[i, n] (an SAE, not a transcoder);
- on the MLP's output in the residual (hook_mlp_out or hook_resid_post of layer L):
  reads[n, i] = W_out[n] · W_enc[:, i] (how much neuron n's output moves latent i's
  pre-activation per unit of activation); writes[n, i] = W_out[n] · W_dec[i];
- a transcoder writing hook_mlp_out of layer L: writes[n, i] = W_out[n] · W_dec[i].
Each latent keeps its ``LINKS`` neurons of largest |weight| and each neuron its ``LINKS``
latents of largest |weight|; a row carries both ranks.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from indexer.analyses.common import RANDOM_SITE, IndexContext
from indexer.forward.sites import Site
from indexer.store.schema import LatentLogitEffects, LatentNeurons

NAME = "latents"
TABLES = (LatentLogitEffects, LatentNeurons)
TOP = 10
LINKS = 10
CHUNK = 1024  # latents per logit-effect matmul
_RESIDUAL = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_mlp_out|hook_attn_out)$")
_AFTER_MLP = re.compile(r"^blocks\.(\d+)\.(hook_mlp_out|hook_resid_post)$")
_NEURONS = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")


def run(ix: IndexContext) -> dict[type, dict[str, Any]]:
    import torch

    from indexer.analyses.logits import folded_unembed
    from indexer.forward.sae_sites import tl_hook, written_hook

    effects = {c: [] for c in LatentLogitEffects.columns()}
    links = {c: [] for c in LatentNeurons.columns()}
    bridge = ix.model.bridge
    with torch.inference_mode():
        w_u, centre = folded_unembed(bridge)
        for name, site in ix.sae_sites.items():
            sae = site.encoder.sae
            out_hook = written_hook(sae)
            if out_hook and _RESIDUAL.match(out_hook) and sae.cfg.d_out == w_u.shape[0]:
                _logit_rows(ix, site, sae.tensors["W_dec"].float(), w_u, centre, effects)
            _link_rows(ix, site, sae, tl_hook(sae), out_hook, links)
        for site in (s for s in ix.neuron_sites if s["name"] == RANDOM_SITE):
            w_out = _w_out(bridge, site["layer"])
            writes = torch.from_numpy(ix.random_directions[site["layer"]]).to(w_out.device) @ w_out  # [k, d_model]
            _logit_rows(ix, Site(site["name"], site["layer"], site["n_features"]), writes, w_u, centre, effects)
    return {LatentLogitEffects: effects, LatentNeurons: links}


def _logit_rows(ix: IndexContext, site, w_dec, w_u, centre: bool, out: dict[str, list]) -> None:
    import torch

    w_u = w_u.to(w_dec.device)
    for start in range(0, w_dec.shape[0], CHUNK):
        dec = w_dec[start:start + CHUNK]
        if centre:
            dec = dec - dec.mean(dim=1, keepdim=True)
        eff = (dec @ w_u).cpu()  # [chunk, vocab]
        n = eff.shape[0]
        for direction, values in (("up", eff), ("down", -eff)):
            top = torch.topk(values, TOP, dim=1)
            ids = top.indices.numpy().ravel()
            for col, v in (("site", [site.name] * ids.size), ("layer", np.full(ids.size, site.layer)),
                           ("neuron", np.repeat(np.arange(start, start + n), TOP)), ("direction", [direction] * ids.size),
                           ("rank", np.tile(np.arange(TOP), n)), ("token_id", ids), ("token_str", ix.vocab[ids].tolist()),
                           ("value", eff.gather(1, top.indices).numpy().ravel())):
                out[col] += list(v)


def _link_rows(ix: IndexContext, site, sae, in_hook: str, out_hook: str | None, out: dict[str, list]) -> None:
    cfg, t = sae.cfg, sae.tensors
    bridge = ix.model.bridge
    weights = {}
    on_neurons = _NEURONS.match(in_hook)
    after = _AFTER_MLP.match(in_hook)
    layer = None
    if on_neurons and not cfg.transcoder:
        layer = int(on_neurons.group(1))
        weights = {"reads": t["W_enc"], "writes": t["W_dec"].T}
    elif after and not cfg.transcoder:
        layer = int(after.group(1))
        w_out = _w_out(bridge, layer)
        weights = {"reads": w_out @ t["W_enc"], "writes": w_out @ t["W_dec"].T}
    elif cfg.transcoder and out_hook and re.match(r"^blocks\.\d+\.hook_mlp_out$", out_hook):
        layer = int(out_hook.split(".")[1])
        weights = {"writes": _w_out(bridge, layer) @ t["W_dec"].T}
    neuron_site = ix.output_site(layer) if layer is not None else None
    if not weights or neuron_site is None:
        return
    for role, w in weights.items():
        w = w.float().cpu().numpy()  # [d_mlp, d_sae]
        size = np.abs(w)
        by_latent = _ranks(size, axis=0)  # rank of each neuron within its latent
        by_neuron = _ranks(size, axis=1)  # rank of each latent within its neuron
        n_idx, l_idx = np.nonzero((by_latent < LINKS) | (by_neuron < LINKS))
        for col, v in (("site", [neuron_site] * len(n_idx)), ("layer", np.full(len(n_idx), layer)), ("neuron", n_idx),
                       ("sae_site", [site.name] * len(n_idx)), ("latent", l_idx), ("role", [role] * len(n_idx)),
                       ("weight", w[n_idx, l_idx]), ("rank_in_latent", by_latent[n_idx, l_idx]),
                       ("rank_in_neuron", by_neuron[n_idx, l_idx])):
            out[col] += list(v)


def _w_out(bridge: Any, layer: int):
    return bridge.blocks[layer].mlp.W_out.detach().float()  # [d_mlp, d_model]


def _ranks(size: np.ndarray, axis: int) -> np.ndarray:
    """Rank of each entry along ``axis`` by decreasing size (0 = largest)."""
    order = np.argsort(-size, axis=axis, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(size.shape[axis]).reshape([-1 if a == axis else 1 for a in range(2)]), axis=axis)
    return ranks
