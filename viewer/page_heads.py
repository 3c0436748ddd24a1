"""The heads page (``?page=heads``): the head wiki, one row per head and a column per score,
sortable, each row linking to the head's page for every metric (its max-activating examples);
below it the pairs of heads that compose most (Q-, K-, V-composition from the weights)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from indexer.api import Index
from viewer import nav, state
from viewer.render import head_query

# What writes head_wiki and head_composition (at indexing time, with the `heads` site).
PRODUCED_BY = "`neuroscope index` (this version, with the `heads` site) writes it; re-index to get it"


def head_link(layer: int, head: int, metric: str) -> str:
    """A head page's link; the fragment carries the head's name for the table to show."""
    return f"{nav.link(head_query(layer, head, metric))}#head-{int(layer)}.{int(head)}"


def wiki_table(wiki: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The wiki with a link column ``open`` first (to the head's first metric) and one per metric."""
    first = metrics[0] if metrics else "max_attn"
    out = pd.DataFrame({"open": [head_link(l, h, first) for l, h in zip(wiki["layer"], wiki["head"])]})
    out = pd.concat([out, wiki.reset_index(drop=True)], axis=1)
    for m in metrics:
        out[f"{m} examples"] = [nav.link(head_query(l, h, m)) for l, h in zip(wiki["layer"], wiki["head"])]
    return out


def composition_table(pairs: pd.DataFrame, metric: str) -> pd.DataFrame:
    return pd.DataFrame({
        "earlier head": [head_link(l, h, metric) for l, h in zip(pairs["layer_a"], pairs["head_a"])],
        "later head": [head_link(l, h, metric) for l, h in zip(pairs["layer_b"], pairs["head_b"])],
        "kind": [f"{k.upper()}-composition" for k in pairs["kind"]],
        "score": pairs["score"].astype(float).to_numpy(),
    })


def render(ix: Index, path: str, key: float) -> None:
    nav.follow(page="heads")
    st.title("Heads")
    metrics = state.head_metrics(ix, path, key)
    wiki = state.head_wiki(ix, path, key)
    st.subheader("Head wiki")
    if wiki is None or wiki.empty:
        st.info(f"This index has no `head_wiki` table: {PRODUCED_BY}. "
                f"(Its `head_scores` are on each head's page.)")
    else:
        st.caption("One row per head: scores on a synthetic [BOS] r r probe (higher = more like that head type; "
                   "mean attention distance in tokens). Click a column to sort; each link opens the head's "
                   "max-activating examples for that metric.")
        table = wiki_table(wiki, metrics)
        config = {"open": st.column_config.LinkColumn("open", display_text=r"#head-(.*)$")}
        config.update({f"{m} examples": st.column_config.LinkColumn(f"{m} examples", display_text=r"metric=(\w+)")
                       for m in metrics})
        config.update({c: st.column_config.NumberColumn(c, format="%.3f") for c in wiki.columns
                       if c not in ("layer", "head")})
        st.dataframe(table, hide_index=True, column_config=config, key="hw_wiki")
    st.subheader("Heads that compose most")
    pairs = state.top_compositions(ix, path, key)
    layers = len(state.head_counts(ix, path, key))
    if pairs is None or (pairs.empty and layers > 1):
        st.info(f"This index has no `head_composition` table: {PRODUCED_BY}.")
    elif pairs.empty:
        st.info("No composition scores: composition is between heads of different layers, and this index has "
                "heads in fewer than two layers.")
    else:
        st.caption(f"The top {len(pairs)} pairs (an earlier head's output read by a later head's queries, keys or "
                   "values; from the weights, as in 'A Mathematical Framework for Transformer Circuits'), best first.")
        link = st.column_config.LinkColumn
        st.dataframe(composition_table(pairs, metrics[0] if metrics else "max_attn"), hide_index=True, column_config={
            "earlier head": link("earlier head", display_text=r"#head-(.*)$"),
            "later head": link("later head", display_text=r"#head-(.*)$"),
            "score": st.column_config.NumberColumn("score", format="%.4f"),
        }, key="hw_comp")
