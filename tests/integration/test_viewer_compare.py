"""Several indexes in one viewer (a picker; every link names its index) and the compare page
(features side by side: two indexes of one model, a SoLU neuron's three sites), with AppTest
on real indexes; what the page shows is checked against the indexes themselves."""

from __future__ import annotations

import json
import os
import re
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from helpers.configs import base_config
from helpers.paths import ROOT
from indexer.api import Index
from indexer.config import IndexConfig
from viewer import charts

APP = str(ROOT / "viewer" / "app.py")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(viewer_index, tmp_path_factory, tiny_solu_dir):
    """The viewer index (toy-1l over three corpora), toy-1l over prose alone, and a SoLU model's
    pre/mid/post sites: three indexes, named after their folders."""
    from indexer.run.engine import index

    root = tmp_path_factory.mktemp("served")
    prose = index(IndexConfig(model="toy-1l", corpus=["prose"], out=str(root / "prose"), tokens=2000, ctx_len=64,
                              batch_size=8, top_k=5, per_bin=2), progress=False)
    solu = index(base_config(str(tiny_solu_dir), str(root / "solu"), sites=("mlp_pre", "mlp_mid", "mlp_post"),
                             tokens=1500), progress=False)
    return {"idx": viewer_index, "prose": prose, "solu": solu}


def run_app(monkeypatch, served, f=(), **params) -> AppTest:
    monkeypatch.setenv("NEUROSCOPE_INDEX", os.pathsep.join(str(p) for p in served.values()))
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = str(v)
    if f:
        at.query_params["f"] = list(f)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def links(at: AppTest) -> list[str]:
    """The links (markdown ``(?...)``) and deep links (```?...```) the page shows."""
    text = " ".join(c.value for c in (*at.caption, *at.markdown))
    return re.findall(r"\((\?[^)\s]+)\)", text) + re.findall(r"`(\?[^`]+)`", text)


def test_picker_routes_and_every_link_names_its_index(monkeypatch, served):
    at = run_app(monkeypatch, served)
    picker = at.selectbox(key="_ns_pick")
    assert picker.options == ["idx", "prose", "solu"] and picker.value == "idx" and not errors(at)
    assert f"`{served['idx']}`" in " ".join(c.value for c in at.sidebar.caption)
    picker.set_value("prose").run()  # the picker opens the other index's overview
    assert at.query_params["ix"] in ("prose", ["prose"]) and f"`{served['prose']}`" in " ".join(c.value for c in at.sidebar.caption)
    at = run_app(monkeypatch, served, ix="prose", site="mlp_post", layer=0, neuron=3)
    found = links(at)
    assert found and all("ix=" in u for u in found), found
    deep = next(c.value for c in at.caption if c.value.startswith("deep link"))
    assert "ix=prose" in deep
    at.button(key="ns_next").click().run()
    assert at.title[0].value.startswith("Neuron 4") and at.query_params["ix"] in ("prose", ["prose"])
    bad = run_app(monkeypatch, served, ix="nope")
    assert any("no index named 'nope'" in e and "idx, prose, solu" in e for e in errors(bad))


def test_goto_form_shows_the_neuron_on_the_page(monkeypatch, served):
    at = run_app(monkeypatch, served, site="mlp_post", layer=0, neuron=686)
    assert at.number_input(key="goto_neuron").value == 686 and at.selectbox(key="goto_site").value == "mlp_post"


def _top_keys(ix: Index, site: str, layer: int, neuron: int) -> set[bytes]:
    top = ix.neuron(layer=layer, neuron=neuron, site=site).top
    ctx = ix.contexts(top["ctx_id"].tolist())
    return {np.asarray(t, np.int64).tobytes() for t in ctx["token_ids"]}


def _overlap_table(at: AppTest):
    return next(d.value for d in at.dataframe if d.value.shape[0] == d.value.shape[1])


def test_one_neuron_in_two_indexes(monkeypatch, served):
    with Index.open(served["idx"]) as a, Index.open(served["prose"]) as b:
        # a neuron whose top contexts the two indexes share in part (prose is in both)
        shares = []
        for n in range(64):
            ka, kb = _top_keys(a, "mlp_post", 0, n), _top_keys(b, "mlp_post", 0, n)
            shares.append(len(ka & kb) / min(len(ka), len(kb)))
        n = int(np.argmax(shares))
        assert 0 < shares[n]
        stats = [a.neuron(layer=0, neuron=n).stats, b.neuron(layer=0, neuron=n).stats]
    at = run_app(monkeypatch, served, page="compare", f=[f"idx:mlp_post:0:{n}", f"prose:mlp_post:0:{n}"])
    assert not errors(at) and at.title[0].value == "Side by side"
    table = at.dataframe[0].value
    for row, expect in zip(table.itertuples(index=False), stats):
        assert row.max == pytest.approx(expect["max"]) and row.tokens == expect["n_tokens"]
    overlap = _overlap_table(at)
    assert overlap.iloc[0, 1] == pytest.approx(shares[n]) and overlap.iloc[0, 0] == 1.0
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    domains = {tuple(s["layer"][0]["encoding"]["x"]["scale"]["domain"]) for s in specs}
    assert len(specs) == 2 and len(domains) == 1  # one value axis for both histograms
    lo, hi = domains.pop()
    assert lo == pytest.approx(min(s["min"] for s in stats)) and hi == pytest.approx(max(s["max"] for s in stats))
    # the neuron page offers this comparison
    page = run_app(monkeypatch, served, ix="idx", site="mlp_post", layer=0, neuron=n)
    offered = [u for u in links(page) if "page=compare" in u]
    assert any(parse_qs(urlsplit(u).query)["f"] == [f"idx:mlp_post:0:{n}", f"prose:mlp_post:0:{n}"]
               for u in offered), offered


def test_solu_sites_side_by_side(monkeypatch, served):
    page = run_app(monkeypatch, served, ix="solu", site="mlp_post", layer=0, neuron=2)
    offered = [u for u in links(page) if "page=compare" in u]
    sides = [f"solu:{s}:0:2" for s in ("mlp_pre", "mlp_mid", "mlp_post")]
    assert any(parse_qs(urlsplit(u).query)["f"] == sides for u in offered), offered
    at = run_app(monkeypatch, served, ix="solu", page="compare", f=sides)
    assert not errors(at)
    overlap = _overlap_table(at)
    with Index.open(served["solu"]) as ix:
        keys = [_top_keys(ix, s, 0, 2) for s in ("mlp_pre", "mlp_mid", "mlp_post")]
    for i in range(3):
        for j in range(3):
            assert overlap.iloc[i, j] == pytest.approx(len(keys[i] & keys[j]) / min(len(keys[i]), len(keys[j])))


@pytest.mark.parametrize("side, needle", [
    ("idx:mlp_post:0:99999", "no such feature"), ("nope:mlp_post:0:1", "no index named"),
    ("idx-mlp_post-0-1", "IX:SITE:LAYER:N"), ("idx:heads/nothing:0:1", "no head"),
])
def test_bad_sides_are_one_message(monkeypatch, served, side, needle):
    at = run_app(monkeypatch, served, page="compare", f=[side])
    assert len(errors(at)) == 1 and needle in errors(at)[0], errors(at)


def test_histogram_labels_every_power_of_ten():
    spec = charts.histogram({"hist": [0, 5, 200_000, 3], "hist_edges": [0, 1, 2, 3, 4]}, None)
    assert spec["layer"][0]["encoding"]["y"]["axis"]["values"] == [0, 1, 10, 100, 1000, 10_000, 100_000, 200_000]
