"""Which page the URL asks for, reading its parameters, and keeping the URL in step.

Every page lives at the app's root; its state is the query string, so any view can be copied
and shared: ``?site=mlp_post&layer=0&neuron=5`` (a neuron), ``?layer=0&head=1&metric=max_attn``
(a head), ``?page=heads`` (the head wiki), ``?page=search&token=...``, ``?page=sql&q=...``, ``?page=overview``,
``?page=compare&f=...`` (features side by side, ``viewer.page_compare``), ``?page=replay&site=...`` (a
feature across checkpoints, in a replay folder: ``viewer.page_replay``). When the viewer serves
several indexes every link also names its index, ``&ix=NAME``, so links stay shareable.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

import streamlit as st

from indexer.errors import NeuroscopeError

PAGES = {"overview": "Overview", "neuron": "Neuron", "head": "Head", "heads": "Heads", "compare": "Compare",
         "search": "Search", "sql": "SQL", "replay": "Replay"}
INDEX_KEY = "_ns_ix"  # session state: the index name links carry (None: one index served, links need none)


class BadParam(NeuroscopeError):
    """A query-string parameter that cannot be used (shown to the user, with the page's form)."""


def page_of(params: Mapping[str, str]) -> str:
    page = params.get("page")
    if page in PAGES:
        return page
    if page is not None:
        raise BadParam(f"unknown page {page!r}; pages are: {', '.join(PAGES)}")
    if "neuron" in params:
        return "neuron"
    if "head" in params:
        return "head"
    return "overview"


def int_param(params: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = params.get(name)
    if raw is None:
        if default is None:
            raise BadParam(f"the URL needs `{name}=`: a whole number")
        return default
    try:
        return int(str(raw).strip())
    except ValueError:
        raise BadParam(f"`{name}` must be a whole number, but the URL has {raw!r}") from None


def _with_index(params: dict[str, object]) -> dict[str, str]:
    """The parameters as strings, with ``ix`` added when several indexes are served."""
    out = {k: str(v) for k, v in params.items() if v is not None}
    here = st.session_state.get(INDEX_KEY)
    if here and "ix" not in params:
        out["ix"] = here
    return out


def link(query: str) -> str:
    """A ``?a=b`` link of this page's index (``&ix=NAME`` added when several indexes are served)."""
    here = st.session_state.get(INDEX_KEY)
    return f"{query}&{urlencode({'ix': here})}" if here and "ix=" not in query else query


def go(**params: object) -> None:
    """Replace the query string (a callback, or followed by st.rerun())."""
    st.query_params.clear()
    st.query_params.update(_with_index(params))


def follow(**params: object) -> None:
    """Make the URL say what is shown, without rerunning."""
    want = _with_index(params)
    if dict(st.query_params) != want:
        st.query_params.clear()
        st.query_params.update(want)
