"""Expert neurons of mixture-of-experts MLPs: the ``experts`` site.

Feature ``e * d_expert + n`` is neuron n of routed expert e: act(gate) × up inside that expert,
the input of its down projection, the MoE analogue of ``mlp_post``. A token the router did not
send to expert e is not a zero of e's neurons: it is not seen at all (NaN, which every recorder
skips; ``indexer.recorders.common``), so an expert neuron's statistics, quantile bins and
examples are over the tokens routed to its expert, and its ``n_tokens`` is that expert's
token count. Where a model has a shared expert (Qwen2-MoE), its neurons follow the routed ones,
as ordinary dense features: ``n_experts * d_expert + n``.

The values are computed from the MoE block's input (``blocks.L.mlp.hook_in``) with the model's
own router module and expert weights, exactly as the Hugging Face block does: every family
whose experts are ``transformers``' fused 3-D ``gate_up_proj`` [E, 2 * d_expert, d_model] with
a router returning (logits, weights, indices): Mixtral, OLMoE, Qwen2-MoE, Qwen3-MoE. Another
layout is refused in one line.
"""

from __future__ import annotations

from typing import Any

from indexer.errors import ConfigError
from indexer.forward.sites import Site

SITE = "experts"


def _original(module: Any) -> Any:
    return getattr(module, "original_component", module)


class ExpertNeurons:
    """Callable: the MoE block's input [batch, pos, d_model] -> float32 [batch, pos, features],
    NaN where a token was not routed to the neuron's expert."""

    def __init__(self, bridge: Any, layer: int):
        block = _original(bridge.blocks[layer].mlp)
        experts = getattr(block, "experts", None)
        router = _original(getattr(block, "gate", None))
        weights = getattr(experts, "gate_up_proj", None)
        if weights is None or weights.ndim != 3 or not callable(router) or not hasattr(experts, "act_fn"):
            raise ConfigError(f"--sites experts: layer {layer}'s MoE block ({type(block).__name__}) does not keep its "
                              "experts as a fused gate_up_proj with a router module; neuroscope reads Mixtral, OLMoE, "
                              "Qwen2-MoE and Qwen3-MoE experts")
        self.router, self.experts = router, experts
        self.n_experts, self.d_expert = int(weights.shape[0]), int(weights.shape[1]) // 2
        shared = getattr(block, "shared_expert", None)
        self.shared = shared if shared is not None and hasattr(shared, "gate_proj") else None
        self.d_shared = int(self.shared.gate_proj.out_features) if self.shared is not None else 0
        self.n_features = self.n_experts * self.d_expert + self.d_shared

    def output_weights(self) -> Any:
        """float32 [features, d_model]: what each neuron writes per unit of activation (its row of
        its expert's down projection; the router weight then scales it by a positive factor)."""
        import torch

        down = self.experts.down_proj.detach().float()  # [E, d_model, d_expert]
        rows = [down.transpose(1, 2).reshape(-1, down.shape[1])]
        if self.shared is not None:
            rows.append(self.shared.down_proj.weight.detach().float().T)
        return torch.cat(rows)

    def __call__(self, hidden: Any) -> Any:
        import torch
        import torch.nn.functional as F

        batch, pos, d = hidden.shape
        flat = hidden.reshape(-1, d)
        _, _, chosen = self.router(flat)  # [tokens, top_k]: the block's own routing of these tokens
        out = torch.full((flat.shape[0], self.n_features), float("nan"), dtype=torch.float32, device=hidden.device)
        routed = out[:, : self.n_experts * self.d_expert].view(-1, self.n_experts, self.d_expert)
        w = self.experts.gate_up_proj
        # each expert's tokens, ascending, grouped by one sort; their counts are the one read
        # from the device per layer (a selection per expert would wait for it once each)
        choice = chosen.reshape(-1)
        token = torch.argsort(choice, stable=True) // chosen.shape[-1]  # a token picks an expert at most once
        start = 0
        for e, n in enumerate(torch.bincount(choice, minlength=self.n_experts).tolist()):
            if n:
                tokens = token[start:start + n]
                gate, up = F.linear(flat[tokens], w[e]).chunk(2, dim=-1)
                routed[tokens, e] = (self.experts.act_fn(gate) * up).float()
            start += n
        if self.shared is not None:
            mlp = self.shared
            out[:, self.n_experts * self.d_expert:] = (mlp.act_fn(mlp.gate_proj(flat)) * mlp.up_proj(flat)).float()
        return out.view(batch, pos, self.n_features)


def expert_site(model: Any, layer: int) -> Site:
    neurons = ExpertNeurons(model.bridge, layer)
    return Site(SITE, layer, neurons.n_features, hook=f"blocks.{layer}.mlp.hook_in", encoder=neurons)


def attach_experts(model: Any, plan: list[Site]) -> list[Site]:
    """``plan`` with each ``experts`` site given its hook and ExpertNeurons (width from the weights)."""
    return [expert_site(model, s.layer) if s.name == SITE and s.encoder is None else s for s in plan]


def experts_manifest(plan: list[Site]) -> dict[str, int] | None:
    """What the manifest says of an index's experts site: n_experts, d_expert, d_shared (None: none)."""
    for site in plan:
        if site.name == SITE and isinstance(site.encoder, ExpertNeurons):
            e = site.encoder
            return {"n_experts": e.n_experts, "d_expert": e.d_expert, "d_shared": e.d_shared}
    return None
