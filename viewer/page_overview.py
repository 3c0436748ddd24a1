"""The overview page: what was indexed and how, per site and layer the distributions of
neuron density and max activation, dead and dense counts, and links into neurons and heads."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from indexer.api import Index
from viewer import baseline, charts, data, nav, page_replay, state
from viewer.render import attr, esc, head_query, neuron_query

LINKS = 12


def render(ix: Index, path: str, key: float) -> None:
    m = ix.manifest
    model = m.get("model") or {}
    st.title(f"neuroscope · {model.get('name', '?')}")
    status = m.get("status", "?")
    if status != "complete":
        st.warning(f"This index is {status}: it holds what was indexed before the run stopped "
                   "(continue it with `neuroscope index ... --resume`).")
    corpora = m.get("corpora") or []
    tokens = sum(int(c.get("tokens", 0)) for c in corpora)
    cols = st.columns(5)
    cols[0].metric("model", str(model.get("name", "?")))
    cols[1].metric("layers × d_mlp", f"{model.get('n_layers', '?')} × {model.get('d_mlp', '?')}")
    cols[2].metric("tokens indexed", f"{tokens:,}")
    cols[3].metric("corpora", len(corpora))
    cols[4].metric("status", status)
    if corpora:
        st.dataframe(pd.DataFrame([{k: c.get(k) for k in ("name", "spec", "tokens", "documents", "bad_records")}
                                   for c in corpora]), hide_index=True)
    with st.expander("How it was run"):
        run = {k: m.get(k) for k in ("created", "device", "ctx_len", "timing", "counts", "versions") if k in m}
        st.json({"config": m.get("config", {}), **run})
    if page_replay.is_replay(ix):  # a replay folder holds its replay, not an index's tables
        page_replay.overview(ix, path, key)
        return
    _neurons(ix, path, key)
    baseline.render(ix, path, key)  # real neurons vs random directions, when the index has them
    _heads(ix, path, key)
    _analyses(ix, path, key)


def _neurons(ix: Index, path: str, key: float) -> None:
    stats = state.neuron_stats(ix, path, key)
    if stats.empty:
        return
    st.header("Neurons")
    for (site, layer), df in stats.groupby(["site", "layer"], sort=False):
        dead, dense = df[data.dead_mask(df)], df[data.dense_mask(df)]
        st.subheader(f"{site} · layer {layer}: {len(df):,} neurons, {len(dead):,} dead, {len(dense):,} dense")
        left, right = st.columns(2)
        left.altair_chart(charts.distribution(df["frac_active"], "density (fraction of tokens > 0)", log=True),
                          width="stretch")
        right.altair_chart(charts.distribution(df["max"], "max activation", log=True), width="stretch")
        best = df.sort_values("max", ascending=False).head(LINKS)
        st.html("<div>Highest max: " + _links(best, site, layer) + "</div>")
        for label, rows in (("Dead", dead), ("Dense", dense)):
            if len(rows):
                with st.expander(f"{label} neurons ({len(rows):,}; dead = never above 0, dense = "
                                 f"active on > {data.DENSE_FRACTION:.0%} of tokens)"):
                    st.html(_links(rows.head(500), site, layer))
    st.html(f'<a href="{attr(nav.link("?page=search"))}">Search neurons</a> · <a href="{attr(nav.link("?page=sql"))}">SQL</a>')


def _links(rows: pd.DataFrame, site: str, layer: int) -> str:
    return ", ".join(f'<a href="{attr(nav.link(neuron_query(site, layer, int(n))))}">{int(n)}</a>'
                     f' <small>({v:.3g})</small>' for n, v in zip(rows["neuron"], rows["max"]))


def _heads(ix: Index, path: str, key: float) -> None:
    scores = state.head_scores(ix, path, key)
    metrics = state.head_metrics(ix, path, key)
    if scores.empty or not metrics:
        return
    st.header("Heads")
    kinds = [c for c in scores.columns if c not in ("layer", "head")]
    head_rows = "".join(
        "<tr><td>" + f'<a href="{attr(nav.link(head_query(int(r.layer), int(r.head), metrics[0])))}">{int(r.layer)}.{int(r.head)}</a>'
        + "</td>" + "".join(f"<td>{float(getattr(r, k)):.3f}</td>" for k in kinds) + "<td>"
        + " ".join(f'<a href="{attr(nav.link(head_query(int(r.layer), int(r.head), mt)))}">{esc(mt)}</a>' for mt in metrics)
        + "</td></tr>"
        for r in scores.itertuples()
    )
    st.html('<table class="ns-table"><tr><th>head</th>' + "".join(f"<th>{esc(k)}</th>" for k in kinds)
            + "<th>metric pages</th></tr>" + head_rows + "</table>")


def _analyses(ix: Index, path: str, key: float) -> None:
    have = {name: state.analysis_count(ix, path, key, name) for name in data.NEURON_ANALYSES + data.HEAD_ANALYSES}
    done = {n: c for n, c in have.items() if c}
    st.header("Analyses")
    if done:
        st.write(", ".join(f"`{n}` ({c:,} rows)" for n, c in done.items()))
    missing = [n for n, c in have.items() if not c]
    if missing:
        st.caption(f"Not yet computed: {', '.join(missing)} — `neuroscope analyze {ix.root}` produces them.")
