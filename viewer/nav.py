"""Which page the URL asks for, reading its parameters, and keeping the URL in step.

Every page lives at the app's root; its state is the query string, so any view can be copied
and shared: ``?site=mlp_post&layer=0&neuron=5`` (a neuron), ``?layer=0&head=1&metric=max_attn``
(a head), ``?page=heads`` (the head wiki), ``?page=search&token=...``, ``?page=sql&q=...``, ``?page=overview``.
"""

from __future__ import annotations

from collections.abc import Mapping

import streamlit as st

from indexer.errors import NeuroscopeError

PAGES = {"overview": "Overview", "neuron": "Neuron", "head": "Head", "heads": "Heads", "search": "Search",
         "sql": "SQL"}


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


def go(**params: object) -> None:
    """Replace the query string (a callback, or followed by st.rerun())."""
    st.query_params.clear()
    st.query_params.update({k: str(v) for k, v in params.items() if v is not None})


def follow(**params: object) -> None:
    """Make the URL say what is shown, without rerunning."""
    want = {k: str(v) for k, v in params.items() if v is not None}
    if dict(st.query_params) != want:
        go(**want)
