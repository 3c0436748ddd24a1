"""The head page: the head's scores against known head types, and for each metric its
statistics and top and quantile examples, the destination token marked and the tokens it
attends to underlined (from ``head_attention``), its wiki row and the heads it composes with."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from indexer.api import Index
from indexer.store import schema
from viewer import nav, state
from viewer.page_neuron import render_feature
from viewer.render import METRIC_NOTES, attn_colour, head_query

HEAD_ANALYSIS_TITLES = {"head_wiki": "Head wiki", "head_composition": "Composition with other heads"}
# What writes the head tables (at indexing time, with the `heads` site), for older indexes.
HEAD_TABLES_BY = "re-indexing with this version (`neuroscope index ...` with the `heads` site) writes it"


def render(ix: Index, path: str, key: float) -> None:
    counts = state.head_counts(ix, path, key)
    metrics = state.head_metrics(ix, path, key)
    if counts.empty or not metrics:
        st.warning("This index holds no attention heads (it was indexed without the `heads` site).")
        return
    p = st.query_params
    layer = nav.int_param(p, "layer", int(counts["layer"].iloc[0]))
    head = nav.int_param(p, "head", 0)
    metric = p.get("metric") or metrics[0]
    here = counts[counts["layer"] == layer]
    if here.empty:
        raise nav.BadParam(f"this index has no heads at layer {layer}; layers: {', '.join(map(str, counts['layer']))}")
    first, last = int(here["first"].iloc[0]), int(here["last"].iloc[0])
    if not first <= head <= last:
        raise nav.BadParam(f"no head {head} in layer {layer}: heads run from {first} to {last}")
    if metric not in metrics:
        raise nav.BadParam(f"no head metric {metric!r}; metrics: {', '.join(metrics)}")
    nav.follow(layer=layer, head=head, metric=metric)
    st.title(f"Head {layer}.{head} · {metric}")
    cols = st.columns([1, 1, 2, 4])
    n_heads = last - first + 1
    cols[0].button("← previous", key="hd_prev", on_click=nav.go,
                   kwargs={"layer": layer, "head": first + (head - first - 1) % n_heads, "metric": metric})
    cols[1].button("next →", key="hd_next", on_click=nav.go,
                   kwargs={"layer": layer, "head": first + (head - first + 1) % n_heads, "metric": metric})
    cols[2].selectbox("metric", metrics, index=metrics.index(metric), key=f"hd_metric_{layer}_{head}_{metric}",
                      on_change=_pick_metric, args=(layer, head, f"hd_metric_{layer}_{head}_{metric}"))
    cols[3].caption(f"deep link: `{nav.link(head_query(layer, head, metric))}`")
    described = (ix.manifest.get("head_metrics") or {}).get(metric)
    if metric in METRIC_NOTES:  # top examples that are not "where the head is most active"
        st.caption(f"{metric}: {described or metric}. Note: {METRIC_NOTES[metric]}.")
    elif described:
        st.caption(f"{metric}: {described} (the value at the destination token, which is marked)")
    _scores(ix, path, key, layer, head)
    page = state.head_page(ix, path, key, layer, head, metric)
    if page.attention:
        st.html(f'<div class="ns-head">Where the marked token attends: the source tokens are underlined in '
                f'<span style="box-shadow:inset 0 -4px 0 {attn_colour(1.0)}">green</span>, darker for more weight '
                f'(hover: <code>attn w</code>); sources before the window are named under it.</div>')
    else:
        st.caption(f"No `head_attention` rows for this head's examples: {HEAD_TABLES_BY}.")
    render_feature(ix, path, key, page, unit="head metric")
    for name, title in HEAD_ANALYSIS_TITLES.items():
        df = page.analyses.get(name)
        st.subheader(title)
        if df is None:
            st.caption(f"This index has no `{name}` table: {HEAD_TABLES_BY}.")
        elif df.empty:
            st.caption(f"No `{name}` rows for this head" + (" (composition needs heads in two or more layers)."
                                                            if name == "head_composition" else "."))
        else:
            st.dataframe(df, hide_index=True)
    st.caption(f"All heads: [the head wiki]({nav.link('?page=heads')})")


def _pick_metric(layer: int, head: int, widget: str) -> None:
    nav.go(layer=layer, head=head, metric=st.session_state[widget])


def _scores(ix: Index, path: str, key: float, layer: int, head: int) -> None:
    scores = state.head_scores(ix, path, key)
    row = scores[(scores["layer"] == layer) & (scores["head"] == head)]
    kinds = [c for c in schema.HeadScores.columns() if c not in ("layer", "head")]
    if not row.empty:
        st.caption("Scores against known head types (on a synthetic repeated random sequence)")
        cols = st.columns(len(kinds))
        for col, kind in zip(cols, kinds):
            col.metric(kind.replace("_", " "), f"{float(row[kind].iloc[0]):.3f}")
    stats = state.heads_of(ix, path, key, layer, head)
    if not stats.empty:
        st.caption("Every metric of this head")
        show = stats[[c for c in ("metric", "max", "mean", "std", "min", "frac_active") if c in stats.columns]]
        st.dataframe(pd.DataFrame(show), hide_index=True)
