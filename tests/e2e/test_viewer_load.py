"""A loaded viewer: 20 concurrent sessions against a real `neuroscope view` server on 127.0.0.1,
each walking neuron pages, a head page, search and SQL. No page may fail; the median and p95
page times are printed (run with -s to see them):

    .venv/bin/python -m pytest -m load -s tests/e2e/test_viewer_load.py
"""

from __future__ import annotations

import json
import random

import pytest

from viewer.serve import free_port, start_viewer, stop
from helpers.viewer_load import run_load
from indexer.api import Index

pytestmark = [pytest.mark.load, pytest.mark.slow]
SESSIONS = 20
NEURON_PAGES = 3  # per session, plus one search, one SQL query and one head page


def walks(index_dir, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    with Index.open(index_dir) as ix:
        neurons = ix.neurons()[["site", "layer", "neuron"]].itertuples(index=False)
        neurons = [tuple(n) for n in neurons]
        tokens = ix.sql("SELECT DISTINCT token_str FROM examples WHERE kind = 'top' AND rank = 0 LIMIT 50")["token_str"]
    out = []
    for i in range(SESSIONS):
        pages = [f"site={s}&layer={l}&neuron={n}" for s, l, n in rng.sample(neurons, NEURON_PAGES)]
        pages.append("page=search&token=" + __import__("urllib.parse").parse.quote(rng.choice(list(tokens))))
        pages.append("page=sql&q=" + ("top-neurons&limit=50" if i % 2 else "SELECT%20count(*)%20FROM%20examples"))
        pages.append(f"layer=0&head={i % 4}&metric=max_attn")
        rng.shuffle(pages)
        out.append(pages)
    return out


def test_twenty_concurrent_sessions_walk_the_viewer_without_errors(viewer_index):
    port = free_port()
    proc = start_viewer(viewer_index, port)
    try:
        result = run_load(port, walks(viewer_index), timeout_s=120, total_s=400)
    finally:
        log = stop(proc)
    summary = result.summary()
    print("\nviewer load:", json.dumps(summary))
    assert result.errors == [], summary
    assert result.pages == SESSIONS * (NEURON_PAGES + 3)
    assert "Traceback" not in log, log[-3000:]
