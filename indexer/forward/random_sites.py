"""Random directions: the site ``random`` (``--sites ...,random:K[:SEED]``), a baseline for neurons.

Its K features in layer L are K random unit directions u_i of the layer's neuron activation
space (``mlp_post``, d_mlp values per token): feature i = u_i . mlp_post, read from the same
hook (``blocks.L.mlp.hook_post``) in the same forward pass, and recorded by the same recorders
as neurons, so every statistic, analysis and viewer page treats them as neurons. If neurons
are no more than random directions, their statistics (density, regex specificity, top-example
token concentration, polysemantic flags) should look the same; where they differ, the basis
means something (the canned query ``random-baseline``, the overview's panel).

The directions are Gaussian vectors normalised to unit length, drawn from NumPy's PCG64
seeded by (SEED, layer, a constant): the site's own seed, not the run's ``--seed`` (which
draws the quantile samples), so two runs that sample differently compare the same directions,
and ``random:K:1`` draws another baseline. A resumed run, every shard of a run and their merge
use the same ones; finalize stores them (table ``random_directions``, one row per direction)
and the analyses and replays read them back from there, not from the seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.config import RANDOM_OF, RANDOM_SITE, random_spec
from indexer.errors import ConfigError
from indexer.forward.sites import Site

SALT = 0x52414E44  # "RAND": directions do not share a stream with other seeded draws


def directions(seed: int, layer: int, k: int, d_mlp: int) -> np.ndarray:
    """float32 [k, d_mlp]: k random unit directions of layer ``layer``'s neuron space.

    >>> u = directions(0, 3, 4, 16); u.shape, bool(np.allclose(np.linalg.norm(u, axis=1), 1))
    ((4, 16), True)
    >>> bool((directions(0, 3, 4, 16) == u).all()), bool((directions(1, 3, 4, 16) == u).any())
    (True, False)
    """
    gauss = np.random.default_rng([seed, layer, SALT]).standard_normal((k, d_mlp))
    return (gauss / np.linalg.norm(gauss, axis=1, keepdims=True)).astype(np.float32)


class RandomDirections:
    """Callable: mlp_post activations [batch, pos, d_mlp] -> float32 [batch, pos, k], the
    projections on the directions (in float32 even under bf16 autocast)."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = np.ascontiguousarray(vectors, np.float32)  # [k, d_mlp]
        self._on: dict[str, Any] = {}  # device -> the transposed directions there

    def __call__(self, x: Any) -> Any:
        import torch

        key = str(x.device)
        if key not in self._on:
            self._on[key] = torch.from_numpy(self.vectors.T.copy()).to(x.device)  # [d_mlp, k]
        with torch.autocast(x.device.type if x.device.type in ("cuda", "cpu") else "cpu", enabled=False):
            return (x.float() @ self._on[key]).contiguous()


def random_site(spec: str, layer: int, d_mlp: int) -> Site:
    """The site of ``layer``'s directions for ``--sites`` entry ``spec`` (``random:K[:SEED]``)."""
    k, seed = random_spec(spec)
    return Site(RANDOM_SITE, layer, k, hook=_hook(layer), encoder=RandomDirections(directions(seed, layer, k, d_mlp)))


def attach_random(plan: list[Site], stored: dict[int, np.ndarray]) -> list[Site]:
    """``plan`` (an index's sites, rebuilt from its manifest) with each ``random`` site given the
    directions the index stored (layer -> [k, d_mlp])."""
    out = []
    for site in plan:
        if site.name != RANDOM_SITE or site.encoder is not None:
            out.append(site)
            continue
        vectors = stored.get(site.layer)
        if vectors is None or len(vectors) != site.n_features:
            raise ConfigError(f"the index's random_directions table has no {site.n_features} directions for "
                              f"layer {site.layer}; index again")
        out.append(Site(site.name, site.layer, site.n_features, hook=_hook(site.layer), encoder=RandomDirections(vectors)))
    return out


def _hook(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"  # RANDOM_OF's hook (indexer.forward.sites)


def direction_columns(plan: list[Site]) -> dict[str, list] | None:
    """The ``random_directions`` table of a plan (None: no random site)."""
    sites = [s for s in plan if s.name == RANDOM_SITE and isinstance(s.encoder, RandomDirections)]
    if not sites:
        return None
    cols: dict[str, list] = {"site": [], "layer": [], "neuron": [], "of_site": [], "direction": []}
    for s in sites:
        k = s.n_features
        cols["site"] += [s.name] * k
        cols["layer"] += [s.layer] * k
        cols["neuron"] += list(range(k))
        cols["of_site"] += [RANDOM_OF] * k
        cols["direction"] += list(s.encoder.vectors)
    return cols
