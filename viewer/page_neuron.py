"""The neuron page: statistics, histogram, coloured top and quantile examples, corpus split,
and the analyses when ``neuroscope analyze`` has written them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from indexer.api import Index
from indexer.config import RANDOM_OF, RANDOM_SITE
from indexer.errors import NeuroscopeError
from viewer import charts, data, nav, state
from viewer.render import SALIENT, bins, esc, example_block, example_header, example_window, neuron_query

ANALYSIS_TITLES = {
    "logit_effects": "Logit effects",
    "flags": "Flags",
    "minimal_examples": "Minimal examples",
    "regex_scores": "Regex scores",
    "trigram_scores": "Trigram scores",
    "token_saliency": "Token saliency",
    "site_agreement": "Agreement between sites",
    "latent_neurons": "SAE latents and neurons",
}


def render(ix: Index, path: str, key: float) -> None:
    counts = state.feature_counts(ix, path, key)
    if counts.empty:
        st.warning("This index holds no neurons (it was indexed with heads only).")
        return
    _sidebar_form(counts)
    p = st.query_params
    site = p.get("site") or str(counts["site"].iloc[0])
    layer = nav.int_param(p, "layer", int(counts["layer"].iloc[0]))
    neuron = nav.int_param(p, "neuron", int(counts["first"].iloc[0]))
    here = counts[(counts["site"] == site) & (counts["layer"] == layer)]
    if here.empty:
        known = ", ".join(f"{r.site} layer {r.layer}" for r in counts.itertuples())
        raise nav.BadParam(f"this index has no site {site!r} at layer {layer}; it has: {known}")
    first, last = int(here["first"].iloc[0]), int(here["last"].iloc[0])
    if not first <= neuron <= last:
        raise nav.BadParam(f"no neuron {neuron} in {site} layer {layer}: neurons run from {first} to {last}")
    nav.follow(site=site, layer=layer, neuron=neuron)
    _header(counts, site, layer, neuron, expert_caption(ix, site, layer, neuron))
    _compare_links(site, layer, neuron)
    page = state.neuron_page(ix, path, key, site, layer, neuron)
    render_feature(ix, path, key, page, unit="neuron")
    _analyses(ix, page, site, layer, neuron, state.vocab(ix, path, key))


def _sidebar_form(counts: pd.DataFrame) -> None:
    """"Go to a neuron", showing the neuron on the page (or the first one, when the URL names none)."""
    sites = list(dict.fromkeys(counts["site"]))
    p = st.query_params
    site = p.get("site") if p.get("site") in sites else sites[0]
    for name, default in (("layer", int(counts["layer"].min())), ("neuron", int(counts["first"].iloc[0]))):
        try:
            st.session_state[f"goto_{name}"] = max(nav.int_param(p, name, default), 0)
        except nav.BadParam:
            st.session_state[f"goto_{name}"] = default
    st.session_state["goto_site"] = site
    with st.sidebar.form("ns_goto"):
        st.write("Go to a neuron")
        st.selectbox("site", sites, key="goto_site")
        st.number_input("layer", min_value=0, step=1, key="goto_layer")
        st.number_input("neuron", min_value=0, step=1, key="goto_neuron")
        st.form_submit_button("Open", on_click=_goto)


def _goto() -> None:
    s = st.session_state
    nav.go(site=s["goto_site"], layer=int(s["goto_layer"]), neuron=int(s["goto_neuron"]))


def _header(counts: pd.DataFrame, site: str, layer: int, neuron: int, caption: str = "") -> None:
    st.title(f"Neuron {neuron} · layer {layer} · {site}{caption}")
    cols = st.columns([1, 1, 1, 5])
    prev = data.neighbour(counts, site, layer, neuron, -1)
    nxt = data.neighbour(counts, site, layer, neuron, +1)
    cols[0].button("← previous", key="ns_prev", on_click=nav.go, kwargs=dict(zip(("site", "layer", "neuron"), prev)))
    cols[1].button("next →", key="ns_next", on_click=nav.go, kwargs=dict(zip(("site", "layer", "neuron"), nxt)))
    cols[2].button("random", key="ns_random", on_click=_random, args=(counts,))
    cols[3].caption(f"deep link: `{nav.link(neuron_query(site, layer, neuron))}`")


def _compare_links(site: str, layer: int, neuron: int) -> None:
    from viewer.page_compare import neuron_links

    links = neuron_links(site, layer, neuron)
    if links:
        st.caption("Compare: " + " · ".join(f"[{text}]({url})" for text, url in links))


def _random(counts: pd.DataFrame) -> None:
    site, layer, neuron = data.random_feature(counts, np.random.default_rng())
    nav.go(site=site, layer=layer, neuron=neuron)


def render_feature(ix: Index, path: str, key: float, page: data.FeaturePage, unit: str) -> None:
    """Statistics, histogram, top examples, corpus split and quantile bins (neurons and heads)."""
    stats = page.record.stats
    manifest = ix.manifest
    vocab = state.vocab(ix, path, key)
    vmax, vmin = float(stats["max"]), float(stats["min"])
    cols = st.columns(6)
    for col, (label, value) in zip(cols, [("max", stats["max"]), ("mean", stats["mean"]), ("std", stats["std"]),
                                          ("min", stats["min"]), ("fraction > 0", stats["frac_active"]),
                                          ("tokens", stats["n_tokens"])]):
        col.metric(label, f"{value:,}" if label == "tokens" else f"{float(value):.4g}")
    chart = charts.histogram(stats, manifest.get("hist_edges"), manifest.get("quantiles"))
    if chart is not None:
        if unit != "neuron":
            chart["layer"][0]["encoding"]["x"]["title"] = "value"
        st.vega_lite_chart(spec=chart, width="stretch")
    top = page.record.top
    st.subheader(f"Top {len(top)} examples")
    if top.empty:
        st.info(f"This {unit} has no top examples (it never had a value on a recorded token).")
    _corpus_split(top, manifest)
    salient = _salience(page)
    if salient:
        st.caption("Underlined in purple: the tokens whose replacement drops the activation by at least "
                   f"{SALIENT:.0%} (token saliency; hover a token for its drop).")
    # One HTML block for all top examples (each with its whole context in a <details>): far
    # fewer Streamlit elements than one per example, and expanding needs no round trip.
    st.html("".join(example_block(row, vocab, vmax, vmin, page.contexts.get(int(row["ctx_id"])), _attention(page, row),
                                  salient.get((int(row["ctx_id"]), int(row["pos"]))))
                    for row in top.to_dict("records")))
    _quantiles(page, vocab, vmax, vmin, manifest)


def _corpus_split(top: pd.DataFrame, manifest: dict) -> None:
    corpora = manifest.get("corpora") or []
    if top.empty or len(corpora) + top["corpus"].nunique() < 2:
        return
    indexed = {c["name"]: c.get("tokens", 0) for c in corpora}
    total = sum(indexed.values()) or 1
    names = list(dict.fromkeys(list(indexed) + top["corpus"].tolist()))
    split = pd.DataFrame({
        "corpus": names,
        "top examples": [int((top["corpus"] == n).sum()) for n in names],
    })
    split["share of top"] = split["top examples"] / max(len(top), 1)
    split["share of tokens indexed"] = [indexed.get(n, 0) / total for n in names]
    st.caption("Corpus split of the top examples")
    st.dataframe(split, hide_index=True, column_config={
        "share of top": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1),
        "share of tokens indexed": st.column_config.NumberColumn(format="%.3f"),
    })


def _quantiles(page: data.FeaturePage, vocab: list[str], vmax: float, vmin: float, manifest: dict) -> None:
    stats, q = page.record.stats, page.record.quantiles
    table = pd.DataFrame(bins(stats, manifest.get("quantiles")))
    st.subheader("Quantile bins")
    st.dataframe(table, hide_index=True, column_config={
        "low": st.column_config.NumberColumn(format="%.4g"), "high": st.column_config.NumberColumn(format="%.4g"),
        "share": st.column_config.NumberColumn(format="%.4f"),
    })
    for b in reversed(table.to_dict("records")):
        rows = q[q["bin"] == b["bin"]]
        head = (f'<div class="ns-bin"><b>Bin {b["bin"]}</b> (quantiles {esc(b["quantiles"])}): values {b["low"]:.4g} to '
                f'{b["high"]:.4g}, {b["tokens"]:,} tokens ({b["share"]:.2%}), {len(rows)} sampled</div>')
        st.html(head + "".join(example_header(row, f"bin {b['bin']} #{int(row['rank'])}")
                               + example_window(row, vocab, vmax, vmin, _attention(page, row),
                                                page.contexts.get(int(row["ctx_id"])))
                               for row in rows.to_dict("records")))


def _salience(page: data.FeaturePage) -> dict[tuple[int, int], dict[int, float]]:
    """(ctx_id, pos) of a top example -> {context position: relative drop} from token_saliency."""
    df = page.analyses.get("token_saliency")
    if df is None or df.empty:
        return {}
    out: dict[tuple[int, int], dict[int, float]] = {}
    for c, p, t, d in zip(df["ctx_id"], df["pos"], df["token_pos"], df["rel_drop"]):
        out.setdefault((int(c), int(p)), {})[int(t)] = float(d)
    return out


def _attention(page: data.FeaturePage, row: dict):
    """Where a head example attends (None for neurons and for heads without head_attention)."""
    return page.attention.get((str(row["kind"]), int(row["bin"]), int(row["rank"]))) if page.attention else None


def _analyses(ix: Index, page: data.FeaturePage, site: str, layer: int, neuron: int, vocab: list[str]) -> None:
    st.header("Analyses")
    produce = f"`neuroscope analyze {ix.root}` produces it"
    for name, title in ANALYSIS_TITLES.items():
        df = page.analyses.get(name)
        st.subheader(title)
        if df is None:
            st.caption(f"This index has no `{name}` table yet: {produce}.")
        elif df.empty:
            st.caption(f"No `{name}` rows for this neuron ({produce}, when it applies).")
        elif name == "minimal_examples":
            _minimal(page, df, vocab)
        elif name == "latent_neurons":
            _latent_links(df, site)
        elif name == "token_saliency":
            _saliency_table(df)
        else:
            st.dataframe(df.drop(columns=[c for c in ("site", "layer", "neuron") if c in df.columns]),
                         hide_index=True)
    _regex_box(ix, site, layer, neuron)


def _saliency_table(df: pd.DataFrame) -> None:
    """The three tokens each top example depends on most (the underlines above, in numbers)."""
    shown = df[df["salience_rank"] < 3].assign(offset=df["pos"] - df["token_pos"])
    st.caption("Per top example: the tokens whose replacement drops the activation most (offset 0 = the "
               f"example's own token), method `{shown['method'].iloc[0] if len(shown) else '?'}`.")
    st.dataframe(shown[["rank", "salience_rank", "token_str", "offset", "rel_drop", "activation_drop", "baseline"]]
                 .sort_values(["rank", "salience_rank"]), hide_index=True)


def _latent_links(df: pd.DataFrame, site: str) -> None:
    """A latent's neurons, or a neuron's latents ('reads': the latent's encoder reads the
    neuron; 'writes': its decoder writes along it), each a link to the other's page."""
    latent_page = site.startswith(data.SAE_SITE)
    if latent_page:
        link = [nav.link(neuron_query(s, l, n)) for s, l, n in zip(df["site"], df["layer"], df["neuron"])]
        shown = df.assign(page=link)[["role", "rank_in_latent", "site", "neuron", "weight", "page"]]
        st.caption("The MLP neurons this latent weighs most (reads: its encoder, writes: its decoder).")
    else:
        link = [nav.link(neuron_query(s, l, n)) for s, l, n in zip(df["sae_site"], df["layer"], df["latent"])]
        shown = df.assign(page=link)[["role", "rank_in_neuron", "sae_site", "latent", "weight", "page"]]
        st.caption("SAE latents that read from this neuron (encoder) or write along it (decoder), largest |weight| first.")
    st.dataframe(shown, hide_index=True, column_config={"page": st.column_config.LinkColumn(display_text="open")})


def _minimal(page: data.FeaturePage, df: pd.DataFrame, vocab: list[str]) -> None:
    """Each minimal example as the cut text (escaped) next to its numbers."""
    top = page.record.top.set_index("rank") if not page.record.top.empty else None
    st.dataframe(df.drop(columns=[c for c in ("site", "layer", "neuron") if c in df.columns]), hide_index=True)
    for row in df.to_dict("records"):
        ctx_id = row.get("ctx_id")
        if (ctx_id is None or ctx_id != ctx_id) and top is not None and row.get("rank") in top.index:
            ctx_id = top.loc[row["rank"], "ctx_id"]
        context = page.contexts.get(int(ctx_id)) if ctx_id is not None and ctx_id == ctx_id else None
        if context is None:
            continue
        start, length = int(row.get("start", 0)), int(row.get("length", 0))
        text = "".join(vocab[int(t)] if 0 <= int(t) < len(vocab) else "" for t in context[start:start + length])
        st.html(f'<div class="ns-ex">{esc(text)}</div>')


def _regex_box(ix: Index, site: str, layer: int, neuron: int) -> None:
    st.subheader("Check a regex")
    check = getattr(ix, "regex_check", None)
    if check is None:
        st.caption("Regex checks are not available in this version.")
        return
    pattern = st.text_input("regex (the tokens it matches should be the ones this neuron fires on)", key="ns_regex")
    if st.button("Check", key="ns_regex_go") and pattern:
        try:
            result = check(layer, neuron, pattern, site=site)
        except NeuroscopeError as e:
            st.error(str(e))
            return
        if isinstance(result, pd.DataFrame):
            st.dataframe(result, hide_index=True)
        else:
            st.json(result if isinstance(result, (dict, list)) else {"result": str(result)})


def expert_caption(ix: Index, site: str, layer: int, neuron: int) -> str:
    """' · expert E neuron N' for a neuron of an experts site (' · shared expert neuron N'), as
    the view ``expert_neurons`` numbers them; a random direction's space; '' for any other site."""
    if site == RANDOM_SITE:
        return f" · a random direction of {RANDOM_OF}'s space (a baseline)"
    if site != "experts":
        return ""
    row = ix.sql("SELECT expert, expert_neuron FROM expert_neurons WHERE layer = $l AND neuron = $n",
                 {"l": int(layer), "n": int(neuron)})
    if row.empty:
        return ""
    expert, within = int(row.expert.iloc[0]), int(row.expert_neuron.iloc[0])
    if expert < int(ix.manifest["experts"]["n_experts"]):
        return f" · expert {expert} neuron {within} (over the tokens routed to it)"
    return f" · shared expert neuron {within}"
