"""What the viewer's pages read from an index, through ``indexer.api.Index`` and ``run_sql``.

Column names come from the table dataclasses of ``indexer.store.schema`` (``cols``); views that
analyses may or may not have written are looked up in DuckDB's catalog first, so a page works
on an index without them and with extra columns in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from indexer.api import Index, NeuronRecord
from indexer.config import RANDOM_SITE
from indexer.store import schema
from indexer.store.canned import DEAD_EPS
from indexer.store.query import run_sql

# A neuron active on more than this fraction of tokens is counted as dense on the overview.
DENSE_FRACTION = 0.5
# Analysis views shown on a neuron page, in page order; any of them may be missing or empty.
NEURON_ANALYSES = ("logit_effects", "flags", "minimal_examples", "regex_scores", "trigram_scores", "token_saliency",
                   "site_agreement", "latent_logit_effects", "latent_neurons")
SAE_SITE = "sae:"  # the sites of SAE latents (a latent's page is a neuron page of such a site)
HEAD_ANALYSES = ("head_wiki", "head_composition")
# Drawn on the head examples rather than shown as a table; joins head_examples on EXAMPLE_SLOT.
ATTENTION = "head_attention"
EXAMPLE_SLOT = ("kind", "bin", "rank")
COMPOSITION_LIMIT = 50
# Sort order of an analysis table: the first of these columns it has (descending unless rank).
_ORDER_BY = ("rank", "score", "f1", "top_k_overlap", "value")
SEARCH_LIMIT = 200


def cols(table: type[schema.Table], *names: str) -> str:
    """``"a", "b"``: names checked against the table's schema (a typo fails loudly, here)."""
    have = set(table.columns()) | set(table.ALIASES)
    missing = [n for n in names if n not in have]
    assert not missing, f"{table.NAME} has no column {missing}"
    return ", ".join(f'"{n}"' for n in names)


def sql(ix: Index, query: str, params: list | None = None) -> pd.DataFrame:
    """A query of the viewer's own (not the user's): no row cap, the default time limit."""
    return run_sql(ix.conn, query, params, limit=None)[0]


# --- features --------------------------------------------------------------------------------


def feature_counts(ix: Index) -> pd.DataFrame:
    """One row per (site, layer) of `neurons`: n, first and last neuron index; manifest order."""
    df = sql(ix, f"SELECT {cols(schema.Neurons, 'site', 'layer')}, count(*) AS n, min(neuron) AS first, "
                 f"max(neuron) AS last FROM neurons GROUP BY site, layer")
    order = {s["name"]: i for i, s in enumerate(ix.manifest.get("sites", []) or [])}
    df["_o"] = [order.get(s, len(order)) for s in df["site"]]
    return df.sort_values(["_o", "site", "layer"]).drop(columns="_o").reset_index(drop=True)


def mlp_sites(ix: Index) -> list[str]:
    """Site names as the index holds them (never hard-coded: they differ between models)."""
    return list(dict.fromkeys(feature_counts(ix)["site"]))


def neighbour(counts: pd.DataFrame, site: str, layer: int, neuron: int, step: int) -> tuple[str, int, int]:
    """The feature ``step`` away in (site, layer, neuron) order, wrapping around at the ends."""
    keys = [(r.site, int(r.layer), int(r.first), int(r.last)) for r in counts.itertuples()]
    if not keys:
        return site, layer, neuron
    flat = [(s, l, f, la) for s, l, f, la in keys]
    i = next((i for i, k in enumerate(flat) if k[0] == site and k[1] == layer), 0)
    s, l, first, last = flat[i]
    n = neuron + step
    if first <= n <= last:
        return s, l, n
    j = (i + (1 if step > 0 else -1)) % len(flat)
    s, l, first, last = flat[j]
    return s, l, first if step > 0 else last


def random_feature(counts: pd.DataFrame, rng: np.random.Generator) -> tuple[str, int, int]:
    """A uniformly random neuron of the index."""
    weights = counts["n"].to_numpy(float)
    row = counts.iloc[int(rng.choice(len(counts), p=weights / weights.sum()))]
    return str(row.site), int(row.layer), int(rng.integers(int(row.first), int(row.last) + 1))


@dataclass(frozen=True)
class FeaturePage:
    """Everything one neuron (or head metric) page shows, read in a fixed number of queries."""

    record: NeuronRecord
    contexts: dict[int, np.ndarray]  # ctx_id -> its stored token ids
    analyses: dict[str, pd.DataFrame | None]  # view -> its rows for this feature (None: no view)
    # (kind, bin, rank) of a head example -> (source positions, weights) from head_attention
    attention: dict[tuple[str, int, int], tuple[list[int], list[float]]] = field(default_factory=dict)


def neuron_page(ix: Index, site: str, layer: int, neuron: int, catalog: dict[str, list[str]] | None = None) -> FeaturePage:
    """``catalog``: the analysis views and their columns (``analysis_catalog``), read once per index."""
    record = ix.neuron(layer=layer, neuron=neuron, site=site)
    catalog = analysis_catalog(ix) if catalog is None else catalog
    key = {"site": site, "layer": layer, "neuron": neuron}
    found = {name: analysis_rows(ix, name, key, catalog) for name in NEURON_ANALYSES}
    if site.startswith(SAE_SITE) or site == RANDOM_SITE:  # logit_effects: keyed by (layer, neuron) of the model's neurons
        found["logit_effects"] = found.pop("latent_logit_effects")
        found["latent_neurons"] = analysis_rows(ix, "latent_neurons", {"sae_site": site, "latent": neuron}, catalog)
        if found.get("site_agreement") is not None:  # keyed by (layer, neuron) too: another feature's rows
            found["site_agreement"] = found["site_agreement"].iloc[:0]
    found.pop("latent_logit_effects", None)
    if found.get("latent_neurons") is not None and not found["latent_neurons"].empty:
        order = "rank_in_latent" if site.startswith(SAE_SITE) else "rank_in_neuron"
        found["latent_neurons"] = found["latent_neurons"].sort_values(["role", order]).reset_index(drop=True)
    return FeaturePage(record, contexts(ix, record.top["ctx_id"].tolist()), found)


def head_page(ix: Index, layer: int, head: int, metric: str, catalog: dict[str, list[str]] | None = None) -> FeaturePage:
    record = ix.head(layer=layer, head=head, metric=metric)
    catalog = analysis_catalog(ix) if catalog is None else catalog
    found = {"head_wiki": analysis_rows(ix, "head_wiki", {"layer": layer, "head": head}, catalog),
             "head_composition": head_compositions(ix, layer, head, catalog)}
    attention = head_attention(ix, layer, head, metric, catalog)
    # The contexts of every example that attends outside its window (to name the source token).
    ctx_ids = set(record.top["ctx_id"].tolist()) | set(record.quantiles["ctx_id"].tolist())
    return FeaturePage(record, contexts(ix, sorted(int(c) for c in ctx_ids)), found, attention)


def head_attention(ix: Index, layer: int, head: int, metric: str,
                   catalog: dict[str, list[str]]) -> dict[tuple[str, int, int], tuple[list[int], list[float]]]:
    """Where each example of one head metric attends (empty when the index has no head_attention)."""
    if not catalog.get(ATTENTION):
        return {}
    df = sql(ix, f"SELECT {cols(schema.HeadAttention, *EXAMPLE_SLOT, 'src_pos', 'weights')} FROM head_attention "
                 "WHERE layer = ? AND head = ? AND metric = ?", [int(layer), int(head), metric])
    return {(str(k), int(b), int(r)): ([int(p) for p in src], [float(w) for w in ws])
            for k, b, r, src, ws in zip(df["kind"], df["bin"], df["rank"], df["src_pos"], df["weights"])}


def head_compositions(ix: Index, layer: int, head: int, catalog: dict[str, list[str]]) -> pd.DataFrame | None:
    """The composition pairs one head is part of (as the earlier or the later head), best first."""
    if "head_composition" not in catalog:
        return None
    if not catalog["head_composition"]:
        return pd.DataFrame()
    return sql(ix, f"SELECT {cols(schema.HeadComposition, 'layer_a', 'head_a', 'layer_b', 'head_b', 'kind', 'score')} "
                   "FROM head_composition WHERE (layer_a = ? AND head_a = ?) OR (layer_b = ? AND head_b = ?) "
                   f"ORDER BY score DESC, layer_a, head_a, layer_b, head_b, kind LIMIT {COMPOSITION_LIMIT}",
               [int(layer), int(head), int(layer), int(head)])


def head_wiki(ix: Index) -> pd.DataFrame | None:
    """Every head with its wiki scores (None: the index has no head_wiki view)."""
    if view_columns(ix, "head_wiki") is None:
        return None
    return sql(ix, f"SELECT * FROM head_wiki ORDER BY {cols(schema.HeadWiki, 'layer', 'head')}")


def top_compositions(ix: Index, limit: int = COMPOSITION_LIMIT) -> pd.DataFrame | None:
    """The pairs of heads that compose most, best first (None: no head_composition view)."""
    if view_columns(ix, "head_composition") is None:
        return None
    return sql(ix, f"SELECT {cols(schema.HeadComposition, 'layer_a', 'head_a', 'layer_b', 'head_b', 'kind', 'score')} "
                   "FROM head_composition ORDER BY score DESC, layer_a, head_a, layer_b, head_b, kind "
                   f"LIMIT {int(limit)}")


def contexts(ix: Index, ctx_ids: list[int]) -> dict[int, np.ndarray]:
    if not ctx_ids:
        return {}
    df = sql(ix, f"SELECT {cols(schema.Contexts, 'ctx_id', 'token_ids')} FROM contexts "
                 "WHERE list_contains(?::BIGINT[], ctx_id)", [[int(c) for c in ctx_ids]])
    return {int(c): np.asarray(t) for c, t in zip(df["ctx_id"], df["token_ids"])}


def vocab(ix: Index) -> list[str]:
    """token_id -> token string ('' where the vocab has a hole)."""
    df = ix.vocab()
    out = [""] * (int(df["token_id"].max()) + 1 if len(df) else 0)
    for i, s in zip(df["token_id"].tolist(), df["token_str"].tolist()):
        out[i] = s
    return out


def head_metrics(ix: Index) -> list[str]:
    names = list((ix.manifest.get("head_metrics") or {}).keys())
    found = sql(ix, f"SELECT DISTINCT {cols(schema.Heads, 'metric')} FROM heads ORDER BY metric")["metric"].tolist()
    return [m for m in names if m in found] + [m for m in found if m not in names]


def head_counts(ix: Index) -> pd.DataFrame:
    return sql(ix, f"SELECT {cols(schema.Heads, 'layer')}, count(DISTINCT head) AS n, min(head) AS first, "
                   "max(head) AS last FROM heads GROUP BY layer ORDER BY layer")


# --- analyses: views that may not exist ------------------------------------------------------


def view_columns(ix: Index, name: str) -> list[str] | None:
    """The columns of a view, or None when the index has no such view."""
    df = sql(ix, "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
             [name])
    return df["column_name"].tolist() or None


def analysis_catalog(ix: Index) -> dict[str, list[str]]:
    """Every analysis view the index has that holds rows -> its columns (views with no rows map
    to an empty list, so a page skips their query)."""
    out = {}
    for name in NEURON_ANALYSES + HEAD_ANALYSES + (ATTENTION,):
        columns = view_columns(ix, name)
        if columns is not None:
            out[name] = columns if analysis_count(ix, name) else []
    return out


def analysis_rows(ix: Index, name: str, key: dict[str, Any], catalog: dict[str, list[str]]) -> pd.DataFrame | None:
    """Rows of analysis view ``name`` for one feature (filtered on the key columns it has)."""
    if name not in catalog:
        return None
    columns = catalog[name]
    if not columns:
        return pd.DataFrame()
    where, params = [], []
    for col, value in key.items():
        if col in columns:
            where.append(f'"{col}" = ?')
            params.append(value)
    if not where:
        return None
    order = next((c for c in _ORDER_BY if c in columns), None)
    query = f'SELECT * FROM "{name}" WHERE ' + " AND ".join(where)
    if order:
        query += f' ORDER BY "{order}"' + ("" if order == "rank" else " DESC")
    return sql(ix, query + " LIMIT 500", params)


def analysis_count(ix: Index, name: str) -> int | None:
    """Rows in an analysis view, or None when there is no such view."""
    if view_columns(ix, name) is None:
        return None
    return int(sql(ix, f'SELECT count(*) AS n FROM (SELECT 1 FROM "{name}" LIMIT 1000000)')["n"].iloc[0])


# --- overview --------------------------------------------------------------------------------


def neuron_stats(ix: Index) -> pd.DataFrame:
    """Density and max of every neuron (for the overview plots and counts)."""
    return sql(ix, f"SELECT {cols(schema.Neurons, 'site', 'layer', 'neuron', 'frac_active', 'max', 'mean')} "
                   "FROM neurons ORDER BY site, layer, neuron")


def dead_mask(stats: pd.DataFrame) -> pd.Series:
    """The same rule as the `dead-neurons` canned query."""
    return (stats["frac_active"] == 0) | (stats["max"] <= DEAD_EPS)


def dense_mask(stats: pd.DataFrame) -> pd.Series:
    return stats["frac_active"] > DENSE_FRACTION


# --- search ----------------------------------------------------------------------------------

_RESULT = f"{cols(schema.Examples, 'site', 'layer', 'neuron')}"


def search_token(ix: Index, token: str, strip: bool = True, kind: str = "top") -> pd.DataFrame:
    """Neurons whose stored examples peak on ``token``, by their largest activation there."""
    match = "trim(token_str) = trim(?)" if strip else "token_str = ?"
    return sql(ix, f"SELECT {_RESULT}, max(activation) AS activation, count(*) AS examples FROM examples "
                   f"WHERE kind = ? AND {match} GROUP BY site, layer, neuron "
                   f"ORDER BY activation DESC, layer, neuron LIMIT {SEARCH_LIMIT}", [kind, token])


def search_text(ix: Index, text: str) -> pd.DataFrame:
    """Neurons with ``text`` (case-insensitive, literal) in the text of a top example."""
    return sql(ix, f"SELECT {_RESULT}, max(activation) AS activation, count(*) AS examples, "
                   "arg_max(context_text, activation) AS context_text FROM examples "
                   "WHERE kind = 'top' AND contains(lower(context_text), lower(?)) GROUP BY site, layer, neuron "
                   f"ORDER BY activation DESC, layer, neuron LIMIT {SEARCH_LIMIT}", [text])


def search_stats(ix: Index, site: str | None, density: tuple[float, float], max_range: tuple[float, float],
                 order: str = "max") -> pd.DataFrame:
    assert order in ("max", "frac_active", "mean")
    where = ["frac_active BETWEEN ? AND ?", '"max" BETWEEN ? AND ?']
    params: list[Any] = [*map(float, density), *map(float, max_range)]
    if site:
        where.append("site = ?")
        params.append(site)
    return sql(ix, f"SELECT {cols(schema.Neurons, 'site', 'layer', 'neuron', 'max', 'frac_active', 'mean')} "
                   f"FROM neurons WHERE {' AND '.join(where)} ORDER BY \"{order}\" DESC, layer, neuron "
                   f"LIMIT {SEARCH_LIMIT}", params)


def flag_names(ix: Index) -> list[str] | None:
    if view_columns(ix, "flags") is None:
        return None
    return sql(ix, f"SELECT DISTINCT {cols(schema.Flags, 'flag')} FROM flags ORDER BY flag")["flag"].tolist()


def search_flag(ix: Index, flag: str) -> pd.DataFrame:
    return sql(ix, f"SELECT {cols(schema.Flags, 'site', 'layer', 'neuron', 'score', 'detail')} FROM flags "
                   f"WHERE flag = ? ORDER BY score DESC, layer, neuron LIMIT {SEARCH_LIMIT}", [flag])
