"""Sites: which activations are indexed, and the hook points that read them.

A site is one layer's worth of features that share recorders:
- ``mlp_pre``: the input of the activation function, ``blocks.L.mlp.hook_pre`` (in
  TransformerLens 4.x's bridge an alias of ``blocks.L.mlp.in.hook_out``, the output of W_in)
                                                                        # [batch, pos, d_mlp]
- ``mlp_mid``: for SoLU models, after SoLU and before its LayerNorm, ``blocks.L.mlp.ln.hook_in``
  (formerly ``mlp_pre_ln``)                                             # [batch, pos, d_mlp]
- ``mlp_post``: the MLP neurons, ``blocks.L.mlp.hook_post`` (after the activation function
  and, for SoLU, its LayerNorm)                                         # [batch, pos, d_mlp]
- ``mlp_gate``, ``mlp_up``: gated MLPs (Llama, Mistral, Qwen, Gemma, OLMo...), where ``mlp_post``
  is act(gate) × up: the gate projection before its activation, ``blocks.L.mlp.hook_pre``
  (the bridge's ``gate.hook_out``; on these models ``mlp_pre`` reads the same hook), and the
  up projection, ``blocks.L.mlp.hook_pre_linear`` (``in.hook_out``)     # [batch, pos, d_mlp]
- ``experts``: mixture-of-experts models, every routed expert's neurons (act(gate) × up inside
  the expert), feature ``expert * d_expert + neuron``, each recorded only over the tokens routed
  to its expert (``indexer.forward.expert_sites``)               # [batch, pos, n_experts * d_expert]
- ``heads``: per-token metrics of every head, feature ``head * N_METRICS + metric``
                                                                        # [batch, pos, n_heads * 4]
- ``random`` (``--sites random:K[:SEED]``): K seeded random unit directions of mlp_post's space,
  read from mlp_post's hook (``indexer.forward.random_sites``)          # [batch, pos, K]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from indexer.config import SITES, canonical_site, random_spec
from indexer.errors import ConfigError
from indexer.inputs.models import ModelInfo

HEAD_METRICS = ("max_attn", "entropy", "out_norm", "value_weighted")
HEAD_METRIC_HELP = {
    "max_attn": "largest attention paid to a non-BOS source",
    "entropy": "entropy of the attention pattern (nats)",
    "out_norm": "norm of the head's output written to the residual stream (z · W_O)",
    "value_weighted": "max over sources of attention × ‖value‖",
}


@dataclass(frozen=True)
class Site:
    """One indexed site of one layer."""

    name: str
    layer: int
    n_features: int
    hook: str | None = None  # the bridge hook of a site computed from another's (SAE, experts, random)
    encoder: Any = field(default=None, compare=False, repr=False)  # what computes its features from the hook

    @property
    def key(self) -> str:
        return f"{self.name}/{self.layer}"

    def __reduce__(self):  # a pickled site (Dask results) is its key: the SAE's weights stay put
        return (Site, (self.name, self.layer, self.n_features, self.hook))

    def hook_names(self) -> tuple[str, ...]:
        """The hook points read, in the order the forward pass fires them."""
        if self.hook is not None:
            return (self.hook,)
        prefix = f"blocks.{self.layer}"
        if self.name == "mlp_post":
            return (f"{prefix}.mlp.hook_post",)
        if self.name == "mlp_pre":
            return (f"{prefix}.mlp.hook_pre",)
        if self.name == "mlp_mid":
            return (f"{prefix}.mlp.ln.hook_in",)
        if self.name == "mlp_gate":
            return (f"{prefix}.mlp.hook_pre",)
        if self.name == "mlp_up":
            return (f"{prefix}.mlp.hook_pre_linear",)
        return (f"{prefix}.attn.hook_v", f"{prefix}.attn.hook_pattern", f"{prefix}.attn.hook_z")


def plan_sites(info: ModelInfo, sites: tuple[str, ...] | None = None, layers: tuple[int, ...] | None = None) -> list[Site]:
    """The sites to index (None: the model's default sites / every layer), ordered by layer and
    then by firing order."""
    names = _choose_sites(info, sites)
    chosen_layers = _choose_layers(info, layers)
    random = next((name for name in names if random_spec(name) is not None), None)
    plan = []
    for layer in chosen_layers:
        for name in ("heads", "mlp_pre", "mlp_gate", "mlp_up", "mlp_mid", "mlp_post", "experts"):  # firing order
            if name in names:
                width = {"heads": info.n_heads * len(HEAD_METRICS), "experts": info.n_experts * info.d_mlp}.get(name, info.d_mlp)
                plan.append(Site(name, layer, width))
        if random is not None:  # read from mlp_post's hook, after it
            from indexer.forward.random_sites import random_site

            plan.append(random_site(random, layer, info.d_mlp))
    return plan


def _choose_sites(info: ModelInfo, sites: tuple[str, ...] | None) -> set[str]:
    if sites is None and info.attn_only:
        return {"heads"}
    if sites is None and info.n_experts:
        return {"experts", "heads"}
    if sites is None:
        return {"mlp_post", "heads"} | ({"mlp_pre", "mlp_mid"} if info.is_solu else set())
    sites = tuple(canonical_site(s) for s in sites)  # an old index or checkpoint may hold old names
    randoms = {s for s in sites if random_spec(s) is not None}
    if randoms and (info.attn_only or info.n_experts):
        raise ConfigError(f"--sites {min(randoms)}: random directions are drawn in the space of a dense MLP's neurons "
                          f"(mlp_post); {info.name} has " + ("no MLPs" if info.attn_only else "a mixture of experts"))
    sites = tuple(s for s in sites if s not in randoms)
    if randoms and not sites:
        return randoms
    if info.attn_only and set(sites) - {"heads"}:
        raise ConfigError(f"--sites {','.join(sorted(set(sites) - {'heads'}))}: {info.name} is attention-only "
                          "(no MLPs); its only site is heads")
    if info.n_experts and set(sites) - {"heads", "experts"}:
        raise ConfigError(f"--sites {','.join(sorted(set(sites) - {'heads', 'experts'}))}: {info.name}'s MLPs are a "
                          f"mixture of {info.n_experts} experts (top-{info.experts_per_token}); index their neurons "
                          "with --sites experts (each recorded over the tokens routed to its expert)")
    if "experts" in sites and not info.n_experts:
        raise ConfigError(f"--sites experts needs a mixture-of-experts model; {info.name}'s MLP is dense: use mlp_post")
    unknown = set(sites) - set(SITES)
    if unknown or not sites:
        raise ConfigError(f"--sites: unknown {', '.join(sorted(unknown))}; expected {', '.join(SITES)}")
    if "mlp_mid" in sites and not info.is_solu:
        raise ConfigError(f"--sites mlp_mid (after SoLU, before its LayerNorm) needs a SoLU model; {info.name} uses {info.act_fn}")
    if {"mlp_gate", "mlp_up"} & set(sites) and not info.gated:
        raise ConfigError(f"--sites mlp_gate/mlp_up need a gated MLP (act(gate) * up); {info.name} has an ungated "
                          f"MLP ({info.act_fn}): use mlp_pre and mlp_post")
    return set(sites) | randoms


def _choose_layers(info: ModelInfo, layers: tuple[int, ...] | None) -> list[int]:
    if layers is None:
        return list(range(info.n_layers))
    bad = [layer for layer in layers if not 0 <= layer < info.n_layers]
    if bad or not layers:
        raise ConfigError(f"--layers {','.join(map(str, layers))}: {info.name} has layers 0..{info.n_layers - 1}")
    return sorted(set(layers))
