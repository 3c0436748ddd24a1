"""A real browser: `neuroscope view` on 127.0.0.1, Debian's chromium driven by Playwright, a
neuron page opened by deep link; its coloured tokens, the top example's max token and value
must be on the page. Saves a screenshot (kept in pytest's tmp folder)."""

from __future__ import annotations

import os
import shutil

import pytest

from viewer.serve import free_port, start_viewer, stop
from indexer.api import Index

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def server(viewer_index):
    port = free_port()
    proc = start_viewer(viewer_index, port)
    yield f"http://127.0.0.1:{port}/"
    stop(proc)


def test_deep_link_opens_a_neuron_page_with_highlighted_tokens(server, viewer_index, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")  # installed by scripts/setup.sh (the test extra)
    assert shutil.which(CHROMIUM) or os.path.exists(CHROMIUM), "scripts/setup.sh installs Debian's chromium"
    with Index.open(viewer_index) as ix:
        neuron = int(ix.sql("SELECT neuron FROM neurons ORDER BY max DESC LIMIT 1")["neuron"].iloc[0])
        top = ix.neuron(layer=0, neuron=neuron).top.iloc[0]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(f"{server}?site=mlp_post&layer=0&neuron={neuron}")
        page.wait_for_selector("span.ns-tok.ns-max", timeout=90_000)
        assert page.locator("h1").first.inner_text().startswith(f"Neuron {neuron} ")
        first = page.locator("div.ns-head").first.inner_text()
        assert f"{float(top['activation']):.4g}" in first and repr(str(top["token_str"])) in first
        marked = page.locator("span.ns-max").first
        assert marked.inner_text().replace("\u21b5", "") == str(top["token_str"])
        assert marked.get_attribute("title").endswith(f": {float(top['activation']):.4g}")  # the hover value
        assert page.locator("span.ns-tok").count() > 50
        assert "site=mlp_post" in page.url and f"neuron={neuron}" in page.url
        shot = tmp_path / "neuron-page.png"
        page.screenshot(path=str(shot), full_page=False)
        browser.close()
    assert shot.stat().st_size > 20_000


@pytest.fixture(scope="module")
def two_indexes(viewer_index, tmp_path_factory):
    """A folder of two indexes: the viewer index (as a link named `idx`) and toy-1l over prose."""
    from indexer.config import IndexConfig
    from indexer.run.engine import index

    folder = tmp_path_factory.mktemp("served")
    index(IndexConfig(model="toy-1l", corpus=["prose"], out=str(folder / "prose"), tokens=2000, ctx_len=64,
                      batch_size=8, top_k=5, per_bin=2), progress=False)
    (folder / "idx").symlink_to(viewer_index, target_is_directory=True)
    port = free_port()
    proc = start_viewer(folder, port)  # a folder of indexes: both served, a picker in the sidebar
    yield f"http://127.0.0.1:{port}/"
    stop(proc)


def test_index_picker_and_side_by_side_page(two_indexes, viewer_index, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(two_indexes)
        picker = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text="Index")
        picker.wait_for(timeout=90_000)
        box = picker.get_by_role("combobox")
        assert box.input_value() == "idx"  # the first index is shown first
        box.click()
        page.get_by_role("option").filter(has_text="prose").click()
        page.wait_for_url("**ix=prose**", timeout=60_000)  # the URL names the index...
        page.locator('[data-testid="stSidebar"] code').filter(has_text="/prose").wait_for(timeout=60_000)  # ...shown
        page.goto(f"{two_indexes}?page=compare&f=idx:mlp_post:0:3&f=prose:mlp_post:0:3&ix=idx")
        page.wait_for_selector("span.ns-tok.ns-max", timeout=90_000)
        assert page.locator("h1").first.inner_text() == "Side by side"
        page.wait_for_function("document.querySelectorAll('.vega-embed').length >= 2", timeout=60_000)
        heads = page.locator("div.ns-head")
        assert heads.count() >= 2
        shot = tmp_path / "compare-page.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 20_000
