"""The SQL page: an editor, the canned queries by name, results with a CSV download. Runs
through the same locked-down ``run_sql`` as ``neuroscope sql``: read-only, a time limit, a
row cap (with a visible notice when the result was cut). The query is in the URL (``q=``)."""

from __future__ import annotations

import time

import streamlit as st

from indexer.api import Index
from indexer.errors import QueryError, QueryTimeout
from indexer.store.canned import CANNED
from indexer.store.query import run_sql

DEFAULT_LIMIT = 1000
DEFAULT_TIMEOUT_S = 30.0
EXAMPLE = "SELECT site, layer, neuron, max, frac_active FROM neurons ORDER BY max DESC LIMIT 20"


def render(ix: Index, path: str, key: float) -> None:
    st.title("SQL")
    p = st.query_params
    query = p.get("q")
    limit = _num(p, "limit", DEFAULT_LIMIT, int)
    timeout_s = _num(p, "timeout", DEFAULT_TIMEOUT_S, float)
    names = ["(choose)"] + sorted(CANNED)
    st.selectbox("canned query", names, key="sql_canned", on_change=_load_canned,
                 format_func=lambda n: n if n not in CANNED else f"{n} — {CANNED[n][0]}")
    if "sql_text" not in st.session_state:
        st.session_state["sql_text"] = query if query is not None else EXAMPLE
    st.text_area("read-only SQL (views: neurons, examples, contexts, vocab, heads, head_examples, head_scores, "
                 "and the analysis views), or a canned query name", key="sql_text", height=140)
    c1, c2, c3 = st.columns([1, 1, 4])
    c1.number_input("row cap", min_value=1, max_value=1_000_000, value=limit, step=100, key="sql_limit")
    c2.number_input("time limit (s)", min_value=0.1, max_value=600.0, value=timeout_s, key="sql_timeout")
    st.button("Run", key="sql_run", type="primary", on_click=_run_clicked)
    if query is None:
        return
    if not query.strip():
        st.warning("The query is empty.")
        return
    try:
        df, truncated, seconds = _cached_sql(ix, path, key, query, limit, timeout_s)
    except QueryTimeout:
        st.error(f"The query ran past the time limit of {timeout_s:g} s and was stopped; "
                 "raise the time limit to give it longer.")
        return
    except QueryError as e:
        st.error(f"Query failed: {e}")
        return
    if truncated:
        st.warning(f"Truncated: showing the first {limit:,} rows; raise the row cap to see more.")
    st.caption(f"{len(df):,} rows in {seconds * 1000:.0f} ms")
    st.dataframe(df, hide_index=True)
    st.download_button("Download CSV", df.to_csv(index=False).encode(), file_name="neuroscope-query.csv",
                       mime="text/csv", key="sql_csv")


@st.cache_data(show_spinner=False, max_entries=128, ttl=600)
def _cached_sql(_ix: Index, path: str, key: float, query: str, limit: int, timeout_s: float):
    started = time.perf_counter()
    df, truncated = run_sql(_ix.conn, query, limit=limit, timeout_s=timeout_s)
    return df, truncated, time.perf_counter() - started


def _num(p, name: str, default, kind):
    from viewer.nav import BadParam

    raw = p.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise BadParam(f"`{name}` must be a number, but the URL has {raw!r}") from None
    if not value > 0:
        raise BadParam(f"`{name}` must be positive, but the URL has {raw!r}")
    return value


def _load_canned() -> None:
    name = st.session_state["sql_canned"]
    if name in CANNED:
        st.session_state["sql_text"] = CANNED[name][1]


def _run_clicked() -> None:
    from viewer.nav import go

    s = st.session_state
    go(page="sql", q=s["sql_text"], limit=int(s["sql_limit"]), timeout=s["sql_timeout"])
