"""Site agreement: for a SoLU model indexed at several MLP sites of one layer (pre, mid,
post), how consistent are each neuron's top examples across the sites?

Method: for every neuron and every pair of neuron sites of its layer, the share of top-k
contexts (``ctx_id``) the two sites have in common, ``|A ∩ B| / k`` with k the larger of the
two top-example counts. 1 = the same contexts, 0 = none shared. Read from the index (no model);
a model indexed at one MLP site per layer gets no rows. Table ``site_agreement``.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from indexer.analyses.common import IndexContext
from indexer.store.schema import SiteAgreement

NAME = "agreement"
TABLES = (SiteAgreement,)


def run(ix: IndexContext) -> dict[type, dict[str, Any]]:
    rows: dict[str, list] = {c: [] for c in SiteAgreement.columns()}
    for layer in sorted({s["layer"] for s in ix.neuron_sites}):
        sites = ix.sites_of_layer(layer)
        if len(sites) < 2:
            continue
        ex = ix.sql("SELECT site, neuron, ctx_id FROM examples WHERE kind = 'top' AND layer = $l", {"l": layer})
        sets = {key: set(g.ctx_id) for key, g in ex.groupby(["site", "neuron"])}
        neurons = sorted(set(ex.neuron))
        for a, b in combinations(sites, 2):
            for n in neurons:
                sa, sb = sets.get((a, n), set()), sets.get((b, n), set())
                k = max(len(sa), len(sb))
                if not k:
                    continue
                for col, v in (("layer", layer), ("neuron", n), ("site_a", a), ("site_b", b),
                               ("top_k_overlap", len(sa & sb) / k), ("k", k)):
                    rows[col].append(v)
    return {SiteAgreement: rows}
