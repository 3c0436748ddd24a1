"""Sites: which activations are indexed, the hooks that read them, and the head metrics.

A site is one layer's worth of features that share recorders:
- ``mlp_post``: the MLP neurons, ``blocks.L.mlp.hook_post``            # [batch, pos, d_mlp]
- ``mlp_pre_ln``: for SoLU models, the activation before the mid-MLP LayerNorm,
  ``blocks.L.mlp.ln.hook_in``                                           # [batch, pos, d_mlp]
- ``heads``: per-token metrics of every head, feature ``head * N_METRICS + metric``
                                                                        # [batch, pos, n_heads * 4]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from indexer.config import SITES
from indexer.errors import ConfigError
from indexer.models import ModelInfo

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

    @property
    def key(self) -> str:
        return f"{self.name}/{self.layer}"

    def hook_names(self) -> tuple[str, ...]:
        """The hook points read, in the order the forward pass fires them."""
        prefix = f"blocks.{self.layer}"
        if self.name == "mlp_post":
            return (f"{prefix}.mlp.hook_post",)
        if self.name == "mlp_pre_ln":
            return (f"{prefix}.mlp.ln.hook_in",)
        return (f"{prefix}.attn.hook_v", f"{prefix}.attn.hook_pattern", f"{prefix}.attn.hook_z")


def plan_sites(info: ModelInfo, sites: str = "all", layers: str = "all") -> list[Site]:
    """The sites to index, ordered by layer and then by firing order."""
    names = _choose_sites(info, sites)
    chosen_layers = _choose_layers(info, layers)
    plan = []
    for layer in chosen_layers:
        for name in ("heads", "mlp_pre_ln", "mlp_post"):  # the order they fire in a block
            if name in names:
                width = info.n_heads * len(HEAD_METRICS) if name == "heads" else info.d_mlp
                plan.append(Site(name, layer, width))
    return plan


def _choose_sites(info: ModelInfo, sites: str) -> set[str]:
    if sites == "all":
        return {"mlp_post", "heads"} | ({"mlp_pre_ln"} if info.is_solu else set())
    names = {s.strip() for s in sites.split(",") if s.strip()}
    unknown = names - set(SITES)
    if unknown:
        raise ConfigError(f"--sites: unknown {', '.join(sorted(unknown))}; expected {', '.join(SITES)}")
    if "mlp_pre_ln" in names and not info.is_solu:
        raise ConfigError(f"--sites mlp_pre_ln needs a SoLU model; {info.name} uses {info.act_fn}")
    return names


def _choose_layers(info: ModelInfo, layers: str) -> list[int]:
    if layers == "all":
        return list(range(info.n_layers))
    try:
        chosen = sorted({int(x) for x in layers.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--layers {layers!r}: expected a comma list of integers") from None
    bad = [layer for layer in chosen if not 0 <= layer < info.n_layers]
    if bad or not chosen:
        raise ConfigError(f"--layers {layers!r}: {info.name} has layers 0..{info.n_layers - 1}")
    return chosen


class HeadMetrics:
    """Per-token head metrics computed from a layer's value, pattern and z tensors."""

    def __init__(self, bridge: Any, layer: int):
        import torch

        w_o = bridge.blocks[layer].attn.W_O.detach().float()  # [head, d_head, d_model]
        # ‖z_h W_O^h‖² = z_h (W_O^h W_O^hᵀ) z_hᵀ: a d_head² Gram matrix instead of a d_model product.
        self.gram = torch.einsum("hdm,hem->hde", w_o, w_o)  # [head, d_head, d_head]

    def __call__(self, v: Any, pattern: Any, z: Any) -> Any:
        """v, z: [batch, pos, head, d_head]; pattern: [batch, head, q, k] -> [batch, pos, head * 4]."""
        import torch

        pattern = pattern.float()
        max_attn = pattern[..., 1:].amax(dim=-1) if pattern.shape[-1] > 1 else torch.zeros_like(pattern[..., 0])
        # Each [batch, head, q, k] temporary is as big as the pattern: make one and reuse it.
        scratch = torch.special.xlogy(pattern, pattern)
        entropy = -scratch.sum(dim=-1)  # [batch, head, q]
        v_norm = v.float().norm(dim=-1).transpose(1, 2)  # [batch, head, k]
        value_weighted = torch.mul(pattern, v_norm[:, :, None, :], out=scratch).amax(dim=-1)  # [batch, head, q]
        z = z.float()
        z_gram = torch.einsum("bphd,hde->bphe", z, self.gram.to(z.device))  # [batch, pos, head, d_head]
        out_sq = (z_gram * z).sum(dim=-1)  # [batch, pos, head]
        out_norm = out_sq.clamp_min(0).sqrt().transpose(1, 2)  # [batch, head, pos]
        metrics = torch.stack([max_attn, entropy, out_norm, value_weighted], dim=-1)  # [batch, head, pos, 4]
        return metrics.permute(0, 2, 1, 3).reshape(pattern.shape[0], pattern.shape[2], -1).contiguous()


class Stop(Exception):
    """Raised from the last hook needed, so the forward pass ends there (no unembedding)."""


def site_hooks(
    bridge: Any, plan: list[Site], sink: Callable[[Site, Any], None]
) -> list[tuple[str, Callable]]:
    """Forward hooks that hand each site's features ``[batch, pos, feat]`` to ``sink``,
    then stop the forward pass after the last one."""
    hooks: list[tuple[str, Callable]] = []
    for i, site in enumerate(plan):
        last = i == len(plan) - 1
        if site.name == "heads":
            hooks.extend(_head_hooks(bridge, site, sink, last))
        else:
            hooks.append((site.hook_names()[0], _feature_hook(site, sink, last)))
    return hooks


def _feature_hook(site: Site, sink: Callable, last: bool) -> Callable:
    def hook(tensor: Any, hook: Any) -> None:
        sink(site, tensor.float().contiguous())
        if last:
            raise Stop

    return hook


def _head_hooks(bridge: Any, site: Site, sink: Callable, last: bool) -> list[tuple[str, Callable]]:
    metrics = HeadMetrics(bridge, site.layer)
    held: dict[str, Any] = {}

    def keep(key: str) -> Callable:
        def hook(tensor: Any, hook: Any) -> None:
            held[key] = tensor

        return hook

    def finish(z: Any, hook: Any) -> None:
        sink(site, metrics(held.pop("v"), held.pop("pattern"), z))
        if last:
            raise Stop

    v_name, pattern_name, z_name = site.hook_names()
    return [(v_name, keep("v")), (pattern_name, keep("pattern")), (z_name, finish)]
