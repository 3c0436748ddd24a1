"""Where each site's recorders live: on the device of its layer's weights.

A model split over devices (TransformerLens ``n_devices``, a Hugging Face ``device_map``)
hands each layer's activations over on that layer's device; recording them there keeps the
recorder state spread like the model, and no activation crosses devices.
"""

from __future__ import annotations

from typing import Any

from indexer.forward.sites import Site


def layer_device(bridge: Any, layer: int, default: str) -> str:
    """The device of block ``layer``'s first parameter (``default`` if it has none)."""
    blocks = getattr(bridge, "blocks", None)
    if blocks is None or not 0 <= layer < len(blocks):
        return default
    for param in blocks[layer].parameters():
        return str(param.device)
    return default


def input_device(bridge: Any, default: str) -> str:
    """Where a split model takes its tokens: the device of its embedding (``default`` if none)."""
    for param in getattr(bridge, "embed", bridge).parameters():
        return str(param.device)
    return default


def site_devices(bridge: Any, plan: list[Site], default: str) -> dict[Site, str]:
    """Each site's recorder device: its layer's."""
    return {site: layer_device(bridge, site.layer, default) for site in plan}
