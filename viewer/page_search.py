"""The search page: neurons by the token they peak on, by text in their top contexts, by
statistics ranges and by flags. The search is in the URL (``?page=search&token=...``)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from indexer.api import Index
from viewer import data, nav, state
from viewer.render import neuron_query

MODES = {"token": "By token", "text": "By text in top contexts", "stats": "By statistics", "flag": "By flag"}


def render(ix: Index, path: str, key: float) -> None:
    st.title("Search neurons")
    p = st.query_params
    mode = next((m for m in ("token", "text", "flag") if p.get(m) is not None), "stats" if "dmin" in p else None)
    url = repr(sorted(p.to_dict().items()))
    if st.session_state.get("sr_url") != url:  # a new URL: the widgets show what it asks for
        st.session_state["sr_url"] = url
        st.session_state["sr_pick"] = mode or st.session_state.get("sr_pick", "token")
        st.session_state["sr_token"] = p.get("token", "")
        st.session_state["sr_text"] = p.get("text", "")
        st.session_state["sr_strip"] = p.get("strip", "1") == "1"
    pick = st.radio("search", list(MODES), format_func=MODES.get, horizontal=True, key="sr_pick")
    sites = data.mlp_sites(ix) if pick == "stats" else []
    if pick == "token":
        st.text_input("token (as in the vocabulary, e.g. ` sundae`)", key="sr_token")
        st.checkbox("ignore leading/trailing spaces", key="sr_strip")
        st.button("Search", key="sr_go_token", on_click=lambda: nav.go(page="search", token=st.session_state["sr_token"],
                                                                        strip="1" if st.session_state["sr_strip"] else "0"))
    elif pick == "text":
        st.text_input("text (literal, case-insensitive)", key="sr_text")
        st.button("Search", key="sr_go_text", on_click=lambda: nav.go(page="search", text=st.session_state["sr_text"]))
    elif pick == "stats":
        st.selectbox("site", ["(any)"] + sites, key="sr_site")
        c1, c2 = st.columns(2)
        c1.slider("density (fraction of tokens > 0)", 0.0, 1.0, (_f(p, "dmin", 0.0), _f(p, "dmax", 1.0)), key="sr_density")
        c2.number_input("max activation at least", value=_f(p, "mmin", 0.0), key="sr_mmin")
        c2.number_input("max activation at most", value=_f(p, "mmax", 1e9), key="sr_mmax")
        st.button("Search", key="sr_go_stats", on_click=_go_stats)
    else:
        flags = state.flag_names(ix, path, key)
        if not flags:
            st.info(f"No flags in this index yet: `neuroscope analyze {ix.root}` produces them "
                    "(dead, dense, polysemantic, ...).")
        else:
            st.selectbox("flag", flags, key="sr_flag")
            st.button("Search", key="sr_go_flag", on_click=lambda: nav.go(page="search", flag=st.session_state["sr_flag"]))
    if mode is None:
        return
    if mode == "token":
        args: tuple = (p["token"], p.get("strip", "1") == "1")
        if not p["token"]:
            st.warning("Type a token to search for.")
            return
    elif mode == "text":
        args = (p["text"],)
        if not p["text"].strip():
            st.warning("Type some text to search for.")
            return
    elif mode == "flag":
        args = (p["flag"],)
    else:
        site = p.get("site")
        args = (site, (_f(p, "dmin", 0.0), _f(p, "dmax", 1.0)), (_f(p, "mmin", -1e30), _f(p, "mmax", 1e30)))
    results = state.search(ix, path, key, mode, args)
    show_results(results)


def _f(p, name: str, default: float) -> float:
    raw = p.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise nav.BadParam(f"`{name}` must be a number, but the URL has {raw!r}") from None


def _go_stats() -> None:
    s = st.session_state
    lo, hi = s["sr_density"]
    nav.go(page="search", site=None if s["sr_site"] == "(any)" else s["sr_site"], dmin=lo, dmax=hi,
           mmin=s["sr_mmin"], mmax=s["sr_mmax"])


def show_results(results: pd.DataFrame) -> None:
    if results.empty:
        st.info("No neurons match.")
        return
    st.caption(f"{len(results):,} neurons{' (the first ' + str(data.SEARCH_LIMIT) + ')' if len(results) >= data.SEARCH_LIMIT else ''}")
    shown = results.copy()
    shown.insert(0, "open", [nav.link(neuron_query(s, l, n)) for s, l, n in zip(shown["site"], shown["layer"], shown["neuron"])])
    st.dataframe(shown, hide_index=True, column_config={
        "open": st.column_config.LinkColumn("open", display_text="open"),
    })
    labels = [f"{s} layer {l} neuron {n}" for s, l, n in zip(results["site"], results["layer"], results["neuron"])]
    choice = st.selectbox("open a result", range(len(labels)), format_func=labels.__getitem__, key="sr_open_pick")
    row = results.iloc[int(choice)]
    st.button("Open neuron page", key="sr_open", on_click=nav.go,
              kwargs={"site": row["site"], "layer": int(row["layer"]), "neuron": int(row["neuron"])})
