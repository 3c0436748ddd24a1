"""The overview's panel for an index with random directions (``--sites ...,random:K``): its real
neurons and the random directions of their space side by side: the canned query
``random-baseline`` (one row per statistic) and the distribution of each feature's max z-score,
(max - mean) / std, where a privileged basis shows as heavier tails."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from indexer.api import Index
from indexer.config import RANDOM_OF, RANDOM_SITE
from indexer.store import schema
from indexer.store.canned import CANNED
from viewer import data, nav
from viewer.render import attr, neuron_query


@st.cache_data(show_spinner=False, max_entries=16)
def comparison(_ix: Index, path: str, key: float) -> pd.DataFrame:
    return data.sql(_ix, CANNED["random-baseline"][1])


@st.cache_data(show_spinner=False, max_entries=16)
def max_z(_ix: Index, path: str, key: float) -> pd.DataFrame:
    """Per feature of the two sites: its max z-score."""
    return data.sql(_ix, f"SELECT {data.cols(schema.Neurons, 'site', 'layer', 'neuron')}, "
                         '("max" - mean) / nullif(std, 0) AS max_z FROM neurons WHERE site IN (?, ?)',
                    [RANDOM_OF, RANDOM_SITE])


def render(ix: Index, path: str, key: float) -> None:
    """The panel, when the index has a random site (nothing otherwise)."""
    if not any(s.get("name") == RANDOM_SITE for s in ix.manifest.get("sites", []) or []):
        return
    st.header("Real neurons vs random directions")
    st.caption(f"Site `{RANDOM_SITE}` holds random unit directions of `{RANDOM_OF}`'s space, recorded and analysed "
               "like neurons. Where a statistic differs, the neuron basis means something; score = relative "
               f"difference (`neuroscope sql {ix.root} random-baseline`). Analyses add rows (flags, regex).")
    table = comparison(ix, path, key)
    if table.empty:
        st.info(f"No {RANDOM_OF} site to compare with.")
        return
    st.dataframe(table[["layer", "statistic", "neurons", "random", "score", "n_neurons", "n_random"]], hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.3g") for c in ("neurons", "random", "score")})
    z = max_z(ix, path, key).dropna()
    z["kind"] = ["random direction" if s == RANDOM_SITE else "neuron" for s in z["site"]]
    st.altair_chart(alt.Chart(z).transform_joinaggregate(total="count()", groupby=["kind"]).transform_calculate(
        share="1 / datum.total").mark_bar(opacity=0.6).encode(
        x=alt.X("max_z:Q", bin=alt.Bin(maxbins=40), title="max z-score, (max - mean) / std"),
        y=alt.Y("sum(share):Q", stack=None, title="share of features"),
        color=alt.Color("kind:N", scale=alt.Scale(range=["#ff7f2a", "#4c78a8"])),
        tooltip=["kind:N", alt.Tooltip("sum(share):Q", format=".1%")],
    ).properties(height=200), width="stretch")
    best = z[z["site"] == RANDOM_SITE].sort_values("max_z", ascending=False).head(8)
    st.html("<div>Random directions with the heaviest tails: " + ", ".join(
        f'<a href="{attr(nav.link(neuron_query(RANDOM_SITE, int(r.layer), int(r.neuron))))}">{int(r.layer)}.{int(r.neuron)}</a>'
        for r in best.itertuples()) + "</div>")
