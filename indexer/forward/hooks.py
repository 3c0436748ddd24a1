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
    [batch, head, q, k], else None), then stop the forward pass after the last one."""
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
        sink(site, tensor.float().contiguous() if site.encoder is None else site.encoder(tensor), None)
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
        pattern = held.pop("pattern")
        sink(site, metrics(held.pop("v"), pattern, z), pattern)
        if last:
            raise Stop

    v_name, pattern_name, z_name = site.hook_names()
    return [(v_name, keep("v")), (pattern_name, keep("pattern")), (z_name, finish)]
