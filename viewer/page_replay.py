"""A replay folder (``neuroscope replay``): on the overview, its checkpoints and a feature x
checkpoint map of rank correlation for the features that changed most; per feature
(``?page=replay&site=S&layer=L&neuron=N``), its trajectory over the checkpoints and its top
examples coloured by each checkpoint's activations, beside the index's own."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from indexer.api import Index
from indexer.store import schema
from viewer import data, nav, state
from viewer.render import attr, esc, example_header, example_window, neuron_query

MAP_FEATURES = 40  # rows of the overview's feature x checkpoint map
_TRAJECTORY = ("rank_correlation", "top_ratio", "new_max", "orig_max", "changed")


def is_replay(ix: Index) -> bool:
    return ix.manifest.get("kind") == "replay"


@st.cache_data(show_spinner=False, max_entries=16)
def features(_ix: Index, path: str, key: float) -> pd.DataFrame:
    """Every (feature, checkpoint) row, in trajectory order."""
    return data.sql(_ix, f"SELECT {data.cols(schema.ReplayFeatures, 'site', 'layer', 'neuron', 'checkpoint', 'step', *_TRAJECTORY)} "
                         "FROM replay_features ORDER BY site, layer, neuron, step")


def overview(ix: Index, path: str, key: float) -> None:
    """The replay's part of the overview page."""
    info = ix.manifest.get("replay") or {}
    st.header("Replay through other checkpoints")
    points = pd.DataFrame(info.get("checkpoints") or [])
    st.write(f"The {info.get('examples', 0):,} top and quantile examples of `{info.get('source', '?')}` "
             f"({info.get('contexts', 0):,} contexts) re-run through each checkpoint, in order.")
    df = features(ix, path, key)
    if df.empty:
        st.info("No checkpoint is finished yet (rerun the same `neuroscope replay` to resume).")
        return
    per = df.groupby("checkpoint").agg(step=("step", "first"), changed=("changed", "sum"),
                                       median_rank_correlation=("rank_correlation", "median")).reset_index()
    table = per.sort_values("step")
    if {"label", "spec", "done"} <= set(points.columns):
        table = points.rename(columns={"label": "checkpoint"})[["checkpoint", "spec", "done"]].merge(
            table.drop(columns="step"), how="left", on="checkpoint")
    st.dataframe(table, hide_index=True)
    rule = info.get("changed_if") or {}
    st.caption(f"changed: rank correlation below {rule.get('rank_correlation_below', '?')} or top-example ratio "
               f"outside {rule.get('top_ratio_outside', '?')} (`neuroscope sql {ix.root} replay-changed`)")
    worst = (df.assign(rc=df["rank_correlation"].fillna(0)).groupby(["site", "layer", "neuron"])["rc"].min()
             .sort_values(kind="stable").head(MAP_FEATURES).reset_index())
    shown = df.merge(worst[["site", "layer", "neuron"]], on=["site", "layer", "neuron"])
    shown = shown.assign(feature=[f"{s} {l}.{n}" for s, l, n in zip(shown["site"], shown["layer"], shown["neuron"])])
    order = list(dict.fromkeys(df.sort_values("step")["checkpoint"]))
    st.altair_chart(alt.Chart(shown).mark_rect().encode(
        x=alt.X("checkpoint:N", sort=order, title="checkpoint"),
        y=alt.Y("feature:N", sort=[f"{s} {l}.{n}" for s, l, n in worst[["site", "layer", "neuron"]].itertuples(index=False)],
                title=None),
        color=alt.Color("rank_correlation:Q", scale=alt.Scale(domain=[-1, 1], scheme="redblue")),
        tooltip=["feature:N", "checkpoint:N", alt.Tooltip("rank_correlation:Q", format=".3f"),
                 alt.Tooltip("top_ratio:Q", format=".3f"), "changed:N"],
    ).properties(height=max(120, 16 * len(worst))), width="stretch")
    st.html("<div>Features that changed most: " + ", ".join(
        f'<a href="{attr(nav.link(_query(s, l, n)))}">{esc(s)} {int(l)}.{int(n)}</a>'
        for s, l, n in worst[["site", "layer", "neuron"]].head(20).itertuples(index=False)) + "</div>")


def render(ix: Index, path: str, key: float) -> None:
    """One feature's trajectory and its top examples under each checkpoint."""
    if not is_replay(ix):
        st.info("This index is not a replay; `neuroscope replay DIR --model SPEC --out DIR2` writes one, and "
                "`neuroscope view DIR DIR2` shows both.")
        return
    df = features(ix, path, key)
    if df.empty:
        st.info("No checkpoint is finished yet.")
        return
    p = st.query_params
    first = df.sort_values(["rank_correlation", "step"], na_position="last").iloc[0]
    site = p.get("site") or str(first["site"])
    layer, neuron = nav.int_param(p, "layer", int(first["layer"])), nav.int_param(p, "neuron", int(first["neuron"]))
    rows = df[(df["site"] == site) & (df["layer"] == layer) & (df["neuron"] == neuron)]
    if rows.empty:
        raise nav.BadParam(f"the replay holds no feature {site} layer {layer} neuron {neuron}")
    nav.follow(page="replay", site=site, layer=layer, neuron=neuron)
    st.title(f"Replay · {site} · layer {layer} · neuron {neuron}")
    source = _source_link(ix, site, layer, neuron)
    if source:
        st.html(f'<div>In the index: <a href="{attr(source)}">its neuron page</a></div>')
    long = rows.melt(id_vars=["checkpoint", "step"], value_vars=["rank_correlation", "top_ratio"], var_name="measure")
    order = list(rows.sort_values("step")["checkpoint"])
    st.altair_chart(alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("checkpoint:N", sort=order), y=alt.Y("value:Q", title=None), color="measure:N",
        tooltip=["checkpoint:N", "measure:N", alt.Tooltip("value:Q", format=".3f")],
    ).properties(height=220), width="stretch")
    st.dataframe(rows.drop(columns=["site", "layer", "neuron"]), hide_index=True)
    chosen = st.selectbox("top examples under", order, index=len(order) - 1, key="ns_replay_ck")
    _examples(ix, path, key, site, layer, neuron, chosen)


def _examples(ix: Index, path: str, key: float, site: str, layer: int, neuron: int, checkpoint: str) -> None:
    ex = data.sql(ix, "SELECT * FROM replay_examples WHERE site = ? AND layer = ? AND neuron = ? AND checkpoint = ? "
                      "AND kind = 'top' ORDER BY rank", [site, int(layer), int(neuron), checkpoint])
    if ex.empty:
        st.caption("No top examples.")
        return
    vocab = state.vocab(ix, path, key)
    contexts = data.contexts(ix, ex["ctx_id"].tolist())
    values = [v for w in ex["window_acts"] if w is not None for v in w if v == v]
    vmax, vmin = max(values + [0.0]), min(values + [0.0])
    st.caption(f"Coloured by {checkpoint}'s activations; the header's max is {checkpoint}'s, 'was' the index's.")
    st.html("".join(
        example_header({**row, "activation": row["new_activation"]}, f"#{int(row['rank'])} (index: {row['activation']:.4g})")
        + example_window(row, vocab, vmax, vmin, context=contexts.get(int(row["ctx_id"])))
        for row in ex.to_dict("records") if row["window_acts"] is not None))


def _query(site: str, layer: int, neuron: int) -> str:
    return neuron_query(site, layer, neuron).replace("?", "?page=replay&", 1)


def _source_link(ix: Index, site: str, layer: int, neuron: int) -> str | None:
    """A link to the feature's page in the replayed index, when this viewer serves it too."""
    source = (ix.manifest.get("replay") or {}).get("source")
    for name, folder in state.index_dirs().items():
        if source and Path(folder).resolve() == Path(source).resolve():
            return f"{neuron_query(site, layer, neuron)}&ix={name}" if len(state.index_dirs()) > 1 else neuron_query(
                site, layer, neuron)
    return None
