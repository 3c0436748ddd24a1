"""The Streamlit app: ``streamlit run viewer/app.py`` with $NEUROSCOPE_INDEX (``neuroscope view``),
one index or several (a picker in the sidebar; ``?ix=NAME``).

One script routes by the query string (see ``viewer.nav``), so deep links work at the root.
Errors meant for users (NeuroscopeError: a missing index, a bad parameter, a failing query)
show as messages; anything else shows as a one-line internal error, never a traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script by streamlit: make `viewer` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamlit as st  # noqa: E402

from indexer.errors import NeuroscopeError, one_line  # noqa: E402
from viewer import nav, state  # noqa: E402
from viewer.render import CSS  # noqa: E402


def main() -> None:
    started = time.perf_counter()
    st.set_page_config(page_title="neuroscope", layout="wide")
    st.html(f"<style>{CSS}</style>")
    try:
        page = nav.page_of(st.query_params)
    except nav.BadParam as e:
        st.error(str(e))
        page = "overview"
    st.session_state["_ns_nav"] = page
    st.sidebar.radio("Page", list(nav.PAGES), format_func=nav.PAGES.get, key="_ns_nav",
                     on_change=lambda: nav.go(page=st.session_state["_ns_nav"]))
    try:
        _pick_index()
        ix, path, key = state.index()
        st.sidebar.caption(f"index: `{path}`")
        render = _pages()[page]
        render(ix, path, key)
    except NeuroscopeError as e:
        st.error(str(e))
    except Exception as e:  # a bug: say so in one line rather than a traceback
        st.error(f"internal error ({type(e).__name__}): {one_line(e)}")
    # The script's own run time (server side), read by scripts/time_viewer.py.
    st.session_state["_ns_run_ms"] = (time.perf_counter() - started) * 1000


def _pick_index() -> None:
    """The sidebar's index picker when several indexes are served; links then carry ``ix``."""
    served = state.index_dirs()
    name = state.chosen()
    st.session_state[nav.INDEX_KEY] = name if len(served) > 1 else None
    if len(served) > 1:
        st.session_state["_ns_pick"] = name
        st.sidebar.selectbox("Index", list(served), key="_ns_pick",
                             on_change=lambda: nav.go(page="overview", ix=st.session_state["_ns_pick"]))


def _pages():
    from viewer import page_compare, page_head, page_heads, page_neuron, page_overview, page_replay, page_search, page_sql

    return {"overview": page_overview.render, "neuron": page_neuron.render, "head": page_head.render,
            "heads": page_heads.render, "compare": page_compare.render, "search": page_search.render,
            "sql": page_sql.render, "replay": page_replay.render}


main()
