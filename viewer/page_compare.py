"""The compare page: up to four features side by side (a neuron in two indexes of one model, a
SoLU neuron's pre/mid/post sites, a latent beside a neuron, two heads): their statistics, their
histograms on one value axis, how much their top contexts overlap, and their top examples.
The sides are in the URL (``viewer.compare``), so a comparison is a link."""

from __future__ import annotations

from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from indexer.api import Index
from viewer import charts, compare, data, nav, state
from viewer.compare import HEADS, MAX_SIDES, Side
from viewer.render import example_block, head_query, neuron_query

EXAMPLES_SHOWN = 8


def link(sides: list[Side]) -> str:
    """``?page=compare&f=...``: the comparison of these sides (and the index this page shows)."""
    pairs = [("page", "compare")] + [("f", s.text()) for s in sides]
    here = st.session_state.get(nav.INDEX_KEY)
    return "?" + urlencode(pairs + ([("ix", here)] if here else []))


def _go(sides: list[Side]) -> None:
    st.query_params.clear()
    st.query_params["page"] = "compare"
    st.query_params["f"] = [s.text() for s in sides]
    if st.session_state.get(nav.INDEX_KEY):
        st.query_params["ix"] = st.session_state[nav.INDEX_KEY]


def render(ix: Index, path: str, key: float) -> None:
    st.title("Side by side")
    sides = [compare.parse(f) for f in st.query_params.get_all("f")][:MAX_SIDES]
    _add_form(sides)
    if not sides:
        st.info("Add features with the form in the sidebar, or open a neuron page and follow one of its "
                "\"compare\" links (its other sites, or the same neuron in another index).")
        return
    pages = [_load(s) for s in sides]
    several = len(state.index_dirs()) > 1
    labels = [s.label(several) for s in sides]
    _stats_table(labels, pages)
    if len(sides) > 1:
        _overlaps(labels, pages)
    domain = compare.shared_domain([p.record.stats for _, p in pages])
    for col, side, label, (ix_s, page) in zip(st.columns(len(sides)), sides, labels, pages):
        with col:
            _column(side, label, ix_s, page, domain, [x for x in sides if x != side])


def _load(side: Side) -> tuple[Index, data.FeaturePage]:
    """The side's index and page, after checking the feature exists there."""
    served = state.index_dirs()
    if side.ix not in served:
        raise nav.BadParam(f"compare: no index named {side.ix!r}; the viewer serves: {', '.join(served)}")
    ix, path, key = state.index(side.ix)
    if side.is_head:
        metrics = state.head_metrics(ix, path, key)
        counts = state.head_counts(ix, path, key)
        here = counts[counts["layer"] == side.layer]
        if side.metric not in metrics or here.empty or not int(here["first"].iloc[0]) <= side.n <= int(here["last"].iloc[0]):
            raise nav.BadParam(f"compare: {side.text()}: {side.ix} has no head {side.layer}.{side.n} with metric "
                               f"{side.metric!r} (metrics: {', '.join(metrics) or 'none'})")
        return ix, state.head_page(ix, path, key, side.layer, side.n, side.metric)
    counts = state.feature_counts(ix, path, key)
    here = counts[(counts["site"] == side.site) & (counts["layer"] == side.layer)]
    if here.empty or not int(here["first"].iloc[0]) <= side.n <= int(here["last"].iloc[0]):
        known = ", ".join(f"{r.site} layer {r.layer} (0..{r.last})" for r in counts.itertuples())
        raise nav.BadParam(f"compare: {side.text()}: {side.ix} has no such feature; it has {known or 'no neurons'}")
    return ix, state.neuron_page(ix, path, key, side.site, side.layer, side.n)


def _stats_table(labels: list[str], pages: list[tuple[Index, data.FeaturePage]]) -> None:
    names = ("n_tokens", "max", "mean", "std", "min", "frac_active")
    rows = {label: {n: p.record.stats.get(n) for n in names} for label, (_, p) in zip(labels, pages)}
    st.dataframe(pd.DataFrame(rows).T.rename(columns={"frac_active": "fraction > 0", "n_tokens": "tokens"}),
                 width="stretch")


def _top_keys(page: data.FeaturePage) -> set[str]:
    return {compare.context_key(page.contexts[int(c)]) for c in page.record.top["ctx_id"] if int(c) in page.contexts}


def _overlaps(labels: list[str], pages: list[tuple[Index, data.FeaturePage]]) -> None:
    keys = [_top_keys(p) for _, p in pages]
    table = pd.DataFrame([[compare.overlap(a, b) for b in keys] for a in keys], index=labels, columns=labels)
    st.caption("Overlap of top contexts: the share of the smaller top-k list whose contexts (same tokens) the "
               "other also holds")
    st.dataframe(table, width="stretch", column_config={c: st.column_config.NumberColumn(format="%.2f") for c in labels})


def _column(side: Side, label: str, ix: Index, page: data.FeaturePage, domain, others: list[Side]) -> None:
    query = head_query(side.layer, side.n, side.metric) if side.is_head else neuron_query(side.site, side.layer, side.n)
    params = dict(pair.split("=", 1) for pair in query[1:].split("&"))
    st.markdown(f"**{label}** · [open]({'?' + urlencode({**params, 'ix': side.ix})}) · "
                f"[remove]({link(others)})")
    stats = page.record.stats
    chart = charts.histogram(stats, ix.manifest.get("hist_edges"), ix.manifest.get("quantiles"), x_domain=domain)
    if chart is not None:
        st.vega_lite_chart(spec=chart, width="stretch")
    vocab = state.vocab(ix, *_path_key(side))
    vmax, vmin = float(stats["max"]), float(stats["min"])
    top = page.record.top.head(EXAMPLES_SHOWN)
    st.caption(f"top {len(top)} of {len(page.record.top)} examples")
    st.html("".join(example_block(row, vocab, vmax, vmin, page.contexts.get(int(row["ctx_id"])))
                    for row in top.to_dict("records")))


def _path_key(side: Side) -> tuple[str, float]:
    _, path, key = state.index(side.ix)
    return path, key


def _add_form(sides: list[Side]) -> None:
    """Add a feature (an index, a site or head metric, a layer, a number) to the comparison. The
    index is picked outside the form, so the form's sites are that index's."""
    served = list(state.index_dirs())
    st.sidebar.write("Add a feature to compare")
    if st.session_state.get("cmp_ix") not in served:
        st.session_state["cmp_ix"] = state.chosen()
    name = st.sidebar.selectbox("index", served, key="cmp_ix")
    ix, path, key = state.index(name)
    sites = list(dict.fromkeys(state.feature_counts(ix, path, key)["site"]))
    sites += [HEADS + m for m in state.head_metrics(ix, path, key)]
    with st.sidebar.form("cmp_add"):
        st.selectbox("site (heads/METRIC: a head metric)", sites, key="cmp_site")
        st.number_input("layer", min_value=0, step=1, key="cmp_layer")
        st.number_input("neuron, latent or head", min_value=0, step=1, key="cmp_n")
        st.form_submit_button("Add", on_click=_add, args=(sides,), disabled=len(sides) >= MAX_SIDES)


def _add(sides: list[Side]) -> None:
    s = st.session_state
    new = Side(s["cmp_ix"], s["cmp_site"], int(s["cmp_layer"]), int(s["cmp_n"]))
    _go([x for x in sides if x != new] + [new])


def neuron_links(site: str, layer: int, neuron: int) -> list[tuple[str, str]]:
    """(text, link) of the comparisons a neuron page offers: the neuron's other sites in this
    index (SoLU pre/mid/post, gate/up), and the same neuron in each other index served."""
    here = state.chosen()
    me = Side(here, site, layer, neuron)
    ix, path, key = state.index(here)
    out = []
    if not site.startswith(data.SAE_SITE):
        counts = state.feature_counts(ix, path, key)
        same = counts[(counts["layer"] == layer) & (counts["first"] <= neuron) & (counts["last"] >= neuron)]
        sites = [s for s in same["site"] if not str(s).startswith(data.SAE_SITE)]
        if len(sites) > 1:
            out.append((f"its sites side by side ({', '.join(sites)})", link([Side(here, s, layer, neuron) for s in sites])))
    others = []
    for name in state.index_dirs():
        if name == here:
            continue
        o_ix, o_path, o_key = state.index(name)
        counts = state.feature_counts(o_ix, o_path, o_key)
        if len(counts[(counts["site"] == site) & (counts["layer"] == layer) & (counts["first"] <= neuron)
                      & (counts["last"] >= neuron)]):
            others.append(Side(name, site, layer, neuron))
    for other in others[: MAX_SIDES - 1]:
        out.append((f"beside {other.ix}", link([me, other])))
    return out
