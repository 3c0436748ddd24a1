"""Forward hooks that hand each site's features to a sink, and stop the pass after the last one."""

from __future__ import annotations

from typing import Any, Callable

from indexer.forward.head_metrics import HeadMetrics
from indexer.forward.sites import Site


class Stop(Exception):
    """Raised from the last hook needed, so the forward pass ends there (no unembedding)."""


def site_hooks(
    bridge: Any, plan: list[Site], sink: Callable[[Site, Any], None]
) -> list[tuple[str, Callable]]:
    """Forward hooks that hand each site's features ``[batch, pos, feat]`` to
    ``sink(site, features, pattern)`` (pattern: a heads site's attention pattern
    [batch, head, q, k], else None), then stop the forward pass once every site has fired,
    whatever order an architecture fires them in."""
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
            hooks.extend(_head_hooks(bridge, site, each))
        else:
            hooks.append((site.hook_names()[0], _feature_hook(site, each)))
    return hooks


def _feature_hook(site: Site, each: Callable) -> Callable:
    encode = site.encoder  # an SAE site's latents are encoded from the hooked activation

    def hook(tensor: Any, hook: Any) -> None:
        each(site, tensor.float().contiguous() if encode is None else encode(tensor), None)

    return hook


def _head_hooks(bridge: Any, site: Site, each: Callable) -> list[tuple[str, Callable]]:
    """The v, pattern and z hooks of a heads site; the metrics are computed when the last of
    the three fires, whatever the order (GPT-J and OPT fire z before the pattern)."""
    metrics = HeadMetrics(bridge, site.layer)
    held: dict[str, Any] = {}

    def keep(key: str) -> Callable:
        def hook(tensor: Any, hook: Any) -> None:
            held[key] = tensor
            if len(held) == 3:
                v, pattern, z = held.pop("v"), held.pop("pattern"), held.pop("z")
                each(site, metrics(v, pattern, z), pattern)

        return hook

    return [(name, keep(key)) for name, key in zip(site.hook_names(), ("v", "pattern", "z"))]
