"""The app's handle on its indexes: per index one shared read-only connection
(``st.cache_resource``), a cursor of its own per browser session (a DuckDB connection is not
shared between threads), and query results cached with ``st.cache_data`` (keyed by the index
folder and its stamp). Which index a page shows is ``?ix=NAME`` (``viewer.indexes``).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pandas as pd
import streamlit as st

from indexer.api import Index
from indexer.errors import IndexDirError
from indexer.store.manifest import MANIFEST
from viewer import data, indexes, nav
from viewer.indexes import INDEX_ENV

_LOCK = threading.Lock()


def index_dirs() -> dict[str, Path]:
    """The indexes served, by name: $NEUROSCOPE_INDEX (``neuroscope view``), else the script's
    arguments (``streamlit run app.py -- DIR ...``). Empty when none was given."""
    if os.environ.get(INDEX_ENV):
        return _named(os.environ[INDEX_ENV])
    args = [a for a in sys.argv[1:] if not a.startswith("-")] if sys.argv[0].endswith("app.py") else []
    return _named(os.pathsep.join(a for a in args if Path(a).is_dir()))


@st.cache_resource(show_spinner=False, max_entries=4)
def _named(value: str) -> dict[str, Path]:
    return indexes.names(indexes.from_env(value)) if value else {}


def chosen() -> str:
    """The name of the index this page shows: ``?ix=NAME``, else the first one served."""
    served = index_dirs()
    if not served:
        raise IndexDirError(f"no index given: start the viewer with `neuroscope view DIR` (or set {INDEX_ENV})")
    name = st.query_params.get("ix")
    if name is None:
        return next(iter(served))
    if name not in served:
        raise nav.BadParam(f"no index named {name!r} here; the viewer serves: {', '.join(served)}")
    return name


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


def index(name: str | None = None) -> tuple[Index, str, float]:
    """This session's Index for ``name`` (default: the chosen one; its own cursor on the shared
    connection), its folder and stamp.

    Raises IndexDirError (a message for the user) when the folder is not a readable index."""
    name = chosen() if name is None else name
    path = str(index_dirs()[name])
    key = stamp(path)
    shared = _shared(path, key)
    cursors = st.session_state.setdefault("_ns_cursors", {})
    mine = cursors.get(path)
    if mine is None or mine[1] != key:
        with _LOCK:  # cursor() on the shared connection, one thread at a time
            mine = (Index(shared.root, shared.conn.cursor(), shared.manifest), key)
        cursors[path] = mine
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
