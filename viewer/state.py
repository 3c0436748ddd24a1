"""The app's handle on the index: one shared read-only connection (``st.cache_resource``), a
cursor of its own per browser session (a DuckDB connection is not shared between threads),
and query results cached with ``st.cache_data`` (keyed by the index folder and its stamp).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pandas as pd
import streamlit as st

from indexer.api import Index
from indexer.store.manifest import MANIFEST
from viewer import data

INDEX_ENV = "NEUROSCOPE_INDEX"
_LOCK = threading.Lock()


def index_dir() -> str | None:
    """The index folder: $NEUROSCOPE_INDEX, else the script's argument (``streamlit run app.py -- DIR``)."""
    if os.environ.get(INDEX_ENV):
        return os.environ[INDEX_ENV]
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    return args[0] if args and Path(args[0]).is_dir() and sys.argv[0].endswith("app.py") else None


def stamp(path: str) -> float:
    """Changes when the index is rewritten or analyses are added (a new key for every cache)."""
    total = 0.0
    for p in (Path(path) / MANIFEST, Path(path) / "analyses"):
        try:
            total += p.stat().st_mtime
        except OSError:
            pass
    return total


@st.cache_resource(show_spinner=False, max_entries=8)
def _shared(path: str, stamp: float) -> Index:
    return Index.open(path)


def index() -> tuple[Index, str, float]:
    """This session's Index (its own cursor on the shared connection), its folder and stamp.

    Raises IndexDirError (a message for the user) when the folder is not a readable index."""
    path = index_dir()
    if path is None:
        from indexer.errors import IndexDirError

        raise IndexDirError(f"no index given: start the viewer with `neuroscope view DIR` (or set {INDEX_ENV})")
    key = stamp(path)
    shared = _shared(path, key)
    mine = st.session_state.get("_ns_index")
    if mine is None or mine[1] != (path, key):
        with _LOCK:  # cursor() on the shared connection, one thread at a time
            mine = (Index(shared.root, shared.conn.cursor(), shared.manifest), (path, key))
        st.session_state["_ns_index"] = mine
    return mine[0], path, key


# Cached reads: the Index is passed as _ix (not hashed); path and stamp key the cache.


@st.cache_data(show_spinner=False, max_entries=64)
def feature_counts(_ix: Index, path: str, key: float) -> pd.DataFrame:
    return data.feature_counts(_ix)


@st.cache_data(show_spinner=False, max_entries=64)
def head_counts(_ix: Index, path: str, key: float) -> pd.DataFrame:
    return data.head_counts(_ix)


@st.cache_data(show_spinner=False, max_entries=64)
def head_metrics(_ix: Index, path: str, key: float) -> list[str]:
    return data.head_metrics(_ix)


@st.cache_data(show_spinner=False, max_entries=8)
def vocab(_ix: Index, path: str, key: float) -> list[str]:
    return data.vocab(_ix)


@st.cache_data(show_spinner=False, max_entries=16)
def analysis_catalog(_ix: Index, path: str, key: float) -> dict[str, list[str]]:
    return data.analysis_catalog(_ix)


@st.cache_data(show_spinner=False, max_entries=1024)
def neuron_page(_ix: Index, path: str, key: float, site: str, layer: int, neuron: int) -> data.FeaturePage:
    return data.neuron_page(_ix, site, layer, neuron, analysis_catalog(_ix, path, key))


@st.cache_data(show_spinner=False, max_entries=256)
def head_page(_ix: Index, path: str, key: float, layer: int, head: int, metric: str) -> data.FeaturePage:
    return data.head_page(_ix, layer, head, metric, analysis_catalog(_ix, path, key))


@st.cache_data(show_spinner=False, max_entries=16)
def neuron_stats(_ix: Index, path: str, key: float) -> pd.DataFrame:
    return data.neuron_stats(_ix)


@st.cache_data(show_spinner=False, max_entries=64)
def head_scores(_ix: Index, path: str, key: float) -> pd.DataFrame:
    return _ix.head_scores()


@st.cache_data(show_spinner=False, max_entries=64)
def heads_of(_ix: Index, path: str, key: float, layer: int, head: int) -> pd.DataFrame:
    df = _ix.heads(layer=layer)
    return df[df["head"] == head].reset_index(drop=True)


@st.cache_data(show_spinner=False, max_entries=64)
def analysis_count(_ix: Index, path: str, key: float, name: str) -> int | None:
    return data.analysis_count(_ix, name)


@st.cache_data(show_spinner=False, max_entries=64)
def flag_names(_ix: Index, path: str, key: float) -> list[str] | None:
    return data.flag_names(_ix)


@st.cache_data(show_spinner=False, max_entries=256, ttl=3600)
def search(_ix: Index, path: str, key: float, kind: str, args: tuple) -> pd.DataFrame:
    fn = {"token": data.search_token, "text": data.search_text, "stats": data.search_stats, "flag": data.search_flag}
    return fn[kind](_ix, *args)


@st.cache_data(show_spinner=False, max_entries=16)
def head_wiki(_ix: Index, path: str, key: float) -> pd.DataFrame | None:
    return data.head_wiki(_ix)


@st.cache_data(show_spinner=False, max_entries=16)
def top_compositions(_ix: Index, path: str, key: float) -> pd.DataFrame | None:
    return data.top_compositions(_ix)
