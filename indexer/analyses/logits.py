"""Logit effects: the tokens a neuron's output directly boosts and suppresses, W_out[n] @ W_U.

Method (the direct path only, whatever the number of layers). The bridge's weights are raw,
so the final normalisation is folded in as TransformerLens's ``fold_ln`` and
``center_unembed`` do:

- LayerNorm (``LN``, ``LNPre``) first subtracts the mean of the residual, so the part of
  W_out[n] along the all-ones direction never reaches the logits: W_out[n] is centred
  (``center_writing_weights``). RMSNorm does not centre, so neither do we.
- The final norm's scale multiplies each residual dimension: W_U' = diag(w) @ W_U (its
  bias adds the same to every neuron and is dropped). For RMSNorm the scale is read by
  running the norm's own module on a constant vector, so Gemma's (1 + w) RMSNorm (and any
  other offset convention) is folded as the model applies it; for LayerNorm it is the weight.
- Tied embeddings need nothing special: W_U is the bridge's unembedding, the transposed
  embedding when they are tied.
- Final-logit soft-capping (Gemma 2: logits = cap * tanh(z / cap)) is not folded: effects are
  on the pre-cap logits z. The cap is monotone per token, so it changes no token's rank
  within a position; it only shrinks changes to tokens whose logit is already near the cap.
- Softmax ignores a constant added to every logit: each row of W_U' is centred over the
  vocabulary (``center_unembed``).

effect[n] = centred(W_out[n]) @ W_U', up to the positive per-token norm scale (1/rms of the
residual), which changes no ranking. ``logit_effects`` holds the top 10 up and down tokens.

Exactly what is folded: W_out of the neuron's layer (centred over d_model for LN/LNPre),
ln_final's weight (multiplied into the rows of W_U), and the vocab mean of each row of W_U'
(subtracted). Not folded: ln_final's bias and b_U (the same for every neuron), the per-token
scale, and every indirect path through later layers. Checked (tests/integration/
test_analyses.py) on a tiny random LN model with a random ln_final and on the embedded
toy-1l against (a) TransformerLens's own processed weights (``enable_compatibility_mode``:
fold_ln + center_writing_weights + center_unembed), W_out @ W_U equal to 1e-4 relative, and
(b) the real forward pass: adding eps * W_out[n] to the final residual with ln_final's scale
frozen changes the vocab-centred logits by exactly eps / scale * effect[n].

Agreement: for each neuron, the tokens that follow its top examples (in the index's contexts,
at the output site of its layer) are looked up in its effect row: score = mean percentile of
those tokens among all tokens (0.5 = chance, 1 = always the most boosted), and
top10_hit_rate = share of them among the 10 most boosted. Table ``logit_agreement``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.analyses.common import SAE_PREFIX, IndexContext
from indexer.store.schema import LogitAgreement, LogitEffects

NAME = "logits"
TABLES = (LogitEffects, LogitAgreement)
TOP = 10


def folded_unembed(bridge: Any):
    """W_U with the final norm's scale folded in and centred over the vocab [d_model, vocab],
    and whether the norm centres the residual (so writers must be centred too)."""
    w_u = bridge.W_U.detach().float()
    kind = str(getattr(bridge.cfg, "normalization_type", None) or "")
    ln = getattr(bridge, "ln_final", None)
    scale = None
    if ln is not None and kind.startswith("RMS"):
        scale = _rms_scale(getattr(ln, "original_component", None) or ln, w_u)
    elif ln is not None:
        params = dict(ln.named_parameters())
        scale = next((p for name, p in params.items() if name.endswith("weight")), None)
    if scale is not None:
        w_u = scale.detach().float()[:, None] * w_u
    w_u = w_u - w_u.mean(dim=1, keepdim=True)
    return w_u, kind in ("LN", "LNPre")


def _rms_scale(norm: Any, w_u: Any):
    """The per-dimension scale an RMSNorm module applies (w, or 1 + w for Gemma): its output
    for a constant input, whose RMS is 1 (1e3 of it, so the module's epsilon is negligible)."""
    import torch

    x = torch.full((1, 1, w_u.shape[0]), 1e3, dtype=torch.float32, device=w_u.device)
    with torch.inference_mode():
        return norm(x)[0, 0].float() / 1e3


def effects(bridge: Any, layer: int):
    """[d_mlp, vocab] direct logit effect of every neuron of ``layer`` (of a mixture-of-experts
    layer: of every expert neuron, the features of its ``experts`` site)."""
    w_u, centre = folded_unembed(bridge)
    if getattr(bridge.cfg, "num_experts", None):  # a mixture of experts: every expert neuron
        from indexer.forward.expert_sites import ExpertNeurons

        w_out = ExpertNeurons(bridge, layer).output_weights()  # [n_experts * d_expert (+ shared), d_model]
    else:
        w_out = bridge.blocks[layer].mlp.W_out.detach().float()  # [d_mlp, d_model]
    if centre:
        w_out = w_out - w_out.mean(dim=1, keepdim=True)
    return w_out @ w_u


def run(ix: IndexContext) -> dict[type, dict[str, Any]]:
    import torch

    bridge = ix.model.bridge
    rows: dict[str, list] = {c: [] for c in LogitEffects.columns()}
    agree: dict[str, list] = {c: [] for c in LogitAgreement.columns()}
    layers = sorted({s["layer"] for s in ix.neuron_sites if not s["name"].startswith(SAE_PREFIX)})  # latents: analyses.latents
    bar = ix.bar(len(layers), "logit effects", unit="layer")
    for layer in layers:
        with torch.inference_mode():
            eff = effects(bridge, layer).cpu()  # [d_mlp, vocab]
        d_mlp = eff.shape[0]
        for direction, values in (("up", eff), ("down", -eff)):
            top = torch.topk(values, TOP, dim=1)
            ids = top.indices.numpy()
            vals = eff.gather(1, top.indices).numpy()
            for col, v in (("layer", np.full(ids.size, layer)), ("neuron", np.repeat(np.arange(d_mlp), TOP)),
                           ("direction", [direction] * ids.size), ("rank", np.tile(np.arange(TOP), d_mlp)),
                           ("token_id", ids.ravel()), ("token_str", ix.vocab[ids.ravel()].tolist()),
                           ("value", vals.ravel())):
                rows[col] += list(v)
        _agreement(ix, layer, eff.numpy(), agree)
        bar.update(1)
    bar.close()
    return {LogitEffects: rows, LogitAgreement: agree}


def _agreement(ix: IndexContext, layer: int, eff: np.ndarray, out: dict[str, list]) -> None:
    site = ix.output_site(layer)
    ex = ix.sql("SELECT neuron, ctx_id, pos FROM examples WHERE kind = 'top' AND site = $s AND layer = $l AND activation > 0",
                {"s": site, "l": layer})
    contexts = ix.contexts(ex.ctx_id)
    ordered = np.sort(eff, axis=1)
    top_ids = np.argsort(-eff, axis=1)[:, :TOP]
    per: dict[int, list[tuple[float, bool]]] = {}
    for n, c, p in zip(ex.neuron, ex.ctx_id, ex.pos):
        tokens = contexts.get(int(c))
        if tokens is None or p + 1 >= len(tokens):
            continue
        nxt = int(tokens[p + 1])
        pct = np.searchsorted(ordered[n], eff[n, nxt], side="left") / (eff.shape[1] - 1)
        per.setdefault(int(n), []).append((float(pct), nxt in top_ids[n]))
    for n, got in sorted(per.items()):
        pct, hit = zip(*got)
        for col, v in (("layer", layer), ("neuron", n), ("site", site), ("score", float(np.mean(pct))),
                       ("top10_hit_rate", float(np.mean(hit))), ("n_examples", len(got))):
            out[col].append(v)
