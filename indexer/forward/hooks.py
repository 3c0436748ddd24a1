"""Forward hooks that hand each site's features to a sink, and stop the pass after the last one."""

from __future__ import annotations

from typing import Any, Callable

from indexer.forward.head_metrics import HeadMetrics
from indexer.forward.sites import Site


class Stop(Exception):
    """Raised from the last hook needed, so the forward pass ends there (no unembedding)."""


def site_hooks(
    bridge: Any, plan: list[Site], sink: Callable[[Site, Any], None], pick: Callable[[Any], Any] | None = None
) -> list[tuple[str, Callable]]:
    """Forward hooks that hand each site's features ``[batch, pos, feat]`` to
    ``sink(site, features, pattern)`` (pattern: a heads site's attention pattern
    [batch, head, q, k], else None), then stop the forward pass once every site has fired,
    whatever order an architecture fires them in. ``pick(tensor)``: the positions wanted of
    a hooked [batch, pos, ...] tensor, taken before a site's features are computed from it
    (an SAE encodes only those)."""
    pick = pick or (lambda tensor: tensor)
    fired: set[Site] = set()

    def each(site: Site, features: Any, pattern: Any) -> None:
        sink(site, features, pattern)
        fired.add(site)
        if len(fired) == len(plan):
            fired.clear()
            raise Stop

    hooks: list[tuple[str, Callable]] = []
    for site in plan:
        if site.name == "heads":
            hooks.extend(_head_hooks(bridge, site, each, pick))
        else:
            hooks.append((site.hook_names()[0], _feature_hook(site, each, pick)))
    return hooks


def narrowing_hook(bridge: Any, plan: list[Site], pick: Callable[[Any], Any]) -> tuple[str, Callable] | None:
    """A hook that hands the MLP of the plan's last layer only the picked positions of its
    input, where every site of that layer reads inside that MLP or at its output: an MLP is
    position-wise, and the pass stops at its last site, before anything adds the narrowed
    output to the residual stream. None where that does not hold (a heads site, an SAE on
    the residual stream, experts read from the block's input) or the bridge has no such hook."""
    last = max(site.layer for site in plan)
    name = f"blocks.{last}.mlp.hook_in"
    inside = (f"blocks.{last}.mlp.", f"blocks.{last}.hook_mlp_out")
    if name not in bridge.hook_dict or any(
        site.name in ("heads", "experts") or not site.hook_names()[0].startswith(inside)
        for site in plan if site.layer == last
    ):
        return None

    def hook(tensor: Any, hook: Any) -> Any:
        return pick(tensor)

    return name, hook


def _feature_hook(site: Site, each: Callable, pick: Callable) -> Callable:
    encode = site.encoder  # an SAE site's latents are encoded from the hooked activation

    def hook(tensor: Any, hook: Any) -> None:
        tensor = pick(tensor)
        each(site, tensor.float().contiguous() if encode is None else encode(tensor), None)

    return hook


def _head_hooks(bridge: Any, site: Site, each: Callable, pick: Callable) -> list[tuple[str, Callable]]:
    """The v, pattern and z hooks of a heads site; the metrics are computed when the last of
    the three fires, whatever the order (GPT-J and OPT fire z before the pattern)."""
    metrics = HeadMetrics(bridge, site.layer)
    held: dict[str, Any] = {}

    def keep(key: str) -> Callable:
        def hook(tensor: Any, hook: Any) -> None:
            held[key] = tensor
            if len(held) == 3:
                v, pattern, z = held.pop("v"), held.pop("pattern"), held.pop("z")
                each(site, pick(metrics(v, pattern, z)), pattern)

        return hook

    return [(name, keep(key)) for name, key in zip(site.hook_names(), ("v", "pattern", "z"))]
