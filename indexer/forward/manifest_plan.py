"""The neuron sites of an existing index, rebuilt on a model from its manifest: what the
analyses re-run and what ``neuroscope replay`` runs through other checkpoints.

Every site but ``heads`` (head metrics are not neurons), with what computes its features:
an SAE site's encoder (the SAE the index was made with, checked by hash), the experts of a
mixture-of-experts layer, a random site's directions (as the index stored them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from indexer.config import RANDOM_SITE
from indexer.forward.expert_sites import attach_experts
from indexer.forward.random_sites import attach_random
from indexer.forward.sites import Site

HEAD_SITE = "heads"


def neuron_sites(manifest: dict[str, Any]) -> list[dict]:
    """The manifest's neuron sites, in firing order: dicts with name, layer, n_features."""
    return [s for s in manifest.get("sites", []) if s["name"] != HEAD_SITE]


def plan_from_manifest(model: Any, manifest: dict[str, Any], layers: Iterable[int] | None = None,
                       sae_sites: dict[str, Site] | None = None,
                       random_directions: dict[int, np.ndarray] | None = None) -> list[Site]:
    """The index's neuron sites (of ``layers``, default all) on ``model``. ``sae_sites``: the
    SAE sites already built (``sae_sites.sites_from_manifest``), else built here;
    ``random_directions``: layer -> [k, d_mlp], needed when the index has a random site."""
    wanted = None if layers is None else set(layers)
    sites = [s for s in neuron_sites(manifest) if wanted is None or s["layer"] in wanted]
    if sae_sites is None and manifest.get("saes"):
        from indexer.forward.sae_sites import sites_from_manifest

        sae_sites = sites_from_manifest(model, manifest)
    sae_sites = sae_sites or {}
    plan = [sae_sites.get(s["name"]) or Site(s["name"], s["layer"], s["n_features"]) for s in sites]
    plan = attach_experts(model, plan)
    if any(s.name == RANDOM_SITE for s in plan):
        plan = attach_random(plan, random_directions or {})
    return plan
