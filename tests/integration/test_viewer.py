"""The Streamlit viewer with AppTest on a real toy-1l index: every page renders, widgets change
what is shown, bad parameters and bad indexes give messages (never tracebacks), corpus text is
escaped in the app and in the static export."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from helpers.viewer import errors, html, run_app, shown, title
from indexer.api import Index
from indexer.store import schema
from indexer.store.writer import IndexWriter

PAYLOAD = "<script>alert('x')</script> <img src=x onerror=alert(1)>"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ix(viewer_index):
    with Index.open(viewer_index) as ix:
        yield ix


@pytest.fixture(scope="module")
def hostile_neuron(ix):
    """A neuron with a top example from the hostile corpus whose window holds the whole payload."""
    vocab = dict(zip(ix.vocab()["token_id"], ix.vocab()["token_str"]))
    df = ix.sql("SELECT site, layer, neuron, window_token_ids FROM examples WHERE kind = 'top' AND corpus = 'hostile' "
                "ORDER BY layer, neuron, rank")
    for row in df.itertuples():
        if PAYLOAD in "".join(vocab[int(t)] for t in row.window_token_ids):
            return row.site, int(row.layer), int(row.neuron)
    raise AssertionError("no top example window holds the whole payload")


def test_overview_shows_the_run_plots_and_links(monkeypatch, viewer_index, ix):
    at = run_app(monkeypatch, viewer_index)
    assert title(at) == "neuroscope · toy-1l" and not errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["tokens indexed"] == "3,000" and metrics["status"] == "complete"
    assert len(at.get("vega_lite_chart")) == 2  # density and max distributions of layer 0
    best = int(ix.sql("SELECT neuron FROM neurons ORDER BY max DESC LIMIT 1")["neuron"].iloc[0])
    assert f'href="?site=mlp_post&amp;layer=0&amp;neuron={best}"' in html(at)
    assert 'href="?layer=0&amp;head=0&amp;metric=' in html(at)
    assert any("neuroscope analyze" in c.value for c in at.caption)


def test_neuron_page_by_deep_link(monkeypatch, viewer_index, ix):
    at = run_app(monkeypatch, viewer_index, site="mlp_post", layer=0, neuron=7)
    assert title(at) == "Neuron 7 · layer 0 · mlp_post" and not errors(at)
    top = ix.neuron(layer=0, neuron=7).top.iloc[0]
    body = html(at)
    assert f"{float(top['activation']):.4g}" in body  # the top example's value, in its header
    assert body.count('class="ns-tok ns-max"') >= 5 + 6  # every top and quantile example marks its token
    assert re.search(r'title="[^"]*: -?[0-9.e-]+"', body)  # hover values
    assert len(at.get("vega_lite_chart")) == 1  # the histogram
    bins = at.dataframe[1].value  # corpus split, then the quantile bins
    assert list(bins["tokens"]) == list(ix.neuron(layer=0, neuron=7).stats["bin_counts"])
    assert abs(bins["share"].sum() - 1) < 1e-9
    assert dict(at.query_params) == {"site": ["mlp_post"], "layer": ["0"], "neuron": ["7"]} or \
        at.query_params.get("neuron") in ("7", ["7"])
    sections = [h.value for h in at.subheader]
    for name in ("Logit effects", "Flags", "Minimal examples", "Regex scores", "Trigram scores"):
        assert name in sections
    assert any("`neuroscope analyze" in c.value for c in at.caption)


def test_neuron_page_expands_to_the_whole_context(monkeypatch, viewer_index, ix):
    at = run_app(monkeypatch, viewer_index, site="mlp_post", layer=0, neuron=3)
    blocks = re.findall(r"<summary>whole context (\d+) \((\d+) tokens\)</summary>(.*?)</details>", html(at), re.S)
    assert blocks
    ctx_id, n, inner = int(blocks[0][0]), int(blocks[0][1]), blocks[0][2]
    tokens = ix.contexts([ctx_id])["token_ids"].iloc[0]
    assert n == len(tokens) and inner.count("<span") == len(tokens)  # one span per stored token of the context


def test_prev_next_random_and_goto_change_the_neuron(monkeypatch, viewer_index):
    at = run_app(monkeypatch, viewer_index, site="mlp_post", layer=0, neuron=7)
    at.button(key="ns_next").click().run()
    assert title(at) == "Neuron 8 · layer 0 · mlp_post"
    at.button(key="ns_prev").click().run()
    at.button(key="ns_prev").click().run()
    assert title(at) == "Neuron 6 · layer 0 · mlp_post"
    assert at.query_params["neuron"] in ("6", ["6"])
    at.button(key="ns_random").click().run()
    assert re.fullmatch(r"Neuron \d+ · layer 0 · mlp_post", title(at)) and not errors(at)
    at.number_input(key="goto_neuron").set_value(1023)
    form_submit = [b for b in at.get("button") if getattr(b, "label", "") == "Open"]
    form_submit[0].click().run()
    assert title(at) == "Neuron 1023 · layer 0 · mlp_post"
    at.button(key="ns_next").click().run()  # wraps around to the first neuron
    assert title(at) == "Neuron 0 · layer 0 · mlp_post"


def test_head_page_and_metric_switch(monkeypatch, viewer_index, ix):
    at = run_app(monkeypatch, viewer_index, layer=0, head=2, metric="entropy")
    assert title(at) == "Head 0.2 · entropy" and not errors(at)
    scores = ix.head_scores()
    prev = float(scores[(scores["layer"] == 0) & (scores["head"] == 2)]["prev_token"].iloc[0])
    assert {m.label: m.value for m in at.metric}["prev token"] == f"{prev:.3f}"
    top = ix.head(0, 2, "entropy").top.iloc[0]
    assert f"{float(top['value']):.4g}" in html(at)
    box = [s for s in at.selectbox if s.label == "metric"][0]
    box.select("max_attn").run()
    assert title(at) == "Head 0.2 · max_attn"
    at.button(key="hd_next").click().run()
    assert title(at) == "Head 0.3 · max_attn"


def test_search_by_token_text_stats_and_flags(monkeypatch, viewer_index, ix):
    row = ix.sql("SELECT token_str, neuron FROM examples WHERE kind = 'top' AND rank = 0 AND length(trim(token_str)) > 2 "
                 "ORDER BY activation DESC LIMIT 1").iloc[0]
    at = run_app(monkeypatch, viewer_index, page="search")
    assert title(at) == "Search neurons"
    at.text_input(key="sr_token").input(row["token_str"])
    at.button(key="sr_go_token").click().run()
    found = at.dataframe[0].value
    assert int(row["neuron"]) in set(found["neuron"]) and found["activation"].is_monotonic_decreasing
    assert at.query_params["token"] in (row["token_str"], [row["token_str"]])
    at.button(key="sr_open").click().run()  # opens the first result
    assert title(at).startswith(f"Neuron {int(found['neuron'].iloc[0])} ")

    at = run_app(monkeypatch, viewer_index, page="search", text="onerror")
    want = set(ix.sql("SELECT DISTINCT neuron FROM examples WHERE kind = 'top' AND context_text LIKE '%onerror%'")["neuron"])
    got = set(at.dataframe[0].value["neuron"])
    assert got <= want and len(got) == min(len(want), 200)  # results are capped at 200 neurons

    at = run_app(monkeypatch, viewer_index, page="search", dmin=0.3, dmax=0.4, mmin=1)
    df = at.dataframe[0].value
    assert len(df) and df["frac_active"].between(0.3, 0.4).all() and (df["max"] >= 1).all()

    at = run_app(monkeypatch, viewer_index, page="search")
    at.radio(key="sr_pick").set_value("flag").run()
    assert any("neuroscope analyze" in i.value for i in at.info)


def test_sql_page_canned_run_truncate_download(monkeypatch, viewer_index):
    at = run_app(monkeypatch, viewer_index, page="sql")
    at.selectbox(key="sql_canned").select("top-neurons").run()
    assert "FROM neurons" in at.text_area(key="sql_text").value
    at.number_input(key="sql_limit").set_value(10)
    at.button(key="sql_run").click().run()
    df = at.dataframe[0].value
    assert len(df) == 10 and df["score"].is_monotonic_decreasing
    assert any("Truncated" in w.value for w in at.warning)
    assert at.get("download_button")
    at = run_app(monkeypatch, viewer_index, page="sql", q="SELECT count(*) AS n FROM neurons")
    assert at.dataframe[0].value["n"].iloc[0] == 1024 and not at.warning


@pytest.mark.parametrize("query,message", [
    ("SELECT * FROM no_such_table", "Query failed"),
    ("DROP VIEW neurons", "only read-only queries"),
    ("SELECT * FROM read_csv('/etc/passwd')", "Query failed"),
    ("SELECT 1; SELECT 2", "exactly one SQL statement"),
])
def test_sql_page_failing_queries_are_messages(monkeypatch, viewer_index, query, message):
    at = run_app(monkeypatch, viewer_index, page="sql", q=query)
    assert any(message in e for e in errors(at)), errors(at)


def test_sql_page_time_limit(monkeypatch, viewer_index):
    at = run_app(monkeypatch, viewer_index, page="sql", q="SELECT sum(i % 7) FROM range(100000000000) t(i)",
                 timeout=0.3)
    assert any("time limit of 0.3 s" in e for e in errors(at)), errors(at)


@pytest.mark.parametrize("params,message", [
    ({"site": "mlp_post", "layer": 0, "neuron": 99999}, "no neuron 99999"),
    ({"site": "mlp_post", "layer": 5, "neuron": 1}, "no site 'mlp_post' at layer 5"),
    ({"site": "nope", "layer": 0, "neuron": 1}, "no site 'nope'"),
    ({"site": "mlp_post", "layer": "abc", "neuron": 1}, "`layer` must be a whole number"),
    ({"layer": 0, "head": 77, "metric": "entropy"}, "no head 77"),
    ({"layer": 0, "head": 1, "metric": "<script>"}, "no head metric"),
    ({"page": "nope"}, "unknown page"),
    ({"page": "sql", "q": "SELECT 1", "limit": "many"}, "`limit` must be a number"),
])
def test_bad_parameters_give_a_message(monkeypatch, viewer_index, params, message):
    at = run_app(monkeypatch, viewer_index, **params)
    assert any(message in e for e in errors(at)), errors(at)


def test_missing_and_half_written_index_folders(monkeypatch, tmp_path, viewer_index):
    at = run_app(monkeypatch, tmp_path / "nowhere")
    assert any("no such directory" in e for e in errors(at))
    half = tmp_path / "half"  # what a killed run leaves before its manifest: data, no manifest
    shutil.copytree(viewer_index / "neurons", half / "neurons")
    at = run_app(monkeypatch, half, site="mlp_post", layer=0, neuron=1)
    assert any("is not a neuroscope index" in e for e in errors(at))
    broken = tmp_path / "broken"
    shutil.copytree(viewer_index, broken)
    (broken / "manifest.json").write_text("{not json")
    at = run_app(monkeypatch, broken)
    assert any("not readable JSON" in e for e in errors(at))
    partial = tmp_path / "partial"
    shutil.copytree(viewer_index, partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    (partial / "manifest.json").write_text(json.dumps({**manifest, "status": "partial"}))
    at = run_app(monkeypatch, partial)
    assert any("This index is partial" in w.value for w in at.warning)
    part = next((partial / "examples").rglob("*.parquet"))
    part.write_bytes(b"PAR1 truncated")  # a corrupt data file: the page says so
    at = run_app(monkeypatch, partial, site="mlp_post", layer=0, neuron=1)
    assert errors(at) and not at.exception


def test_analyses_show_when_written_and_extra_columns_are_fine(monkeypatch, tmp_path, viewer_index):
    folder = tmp_path / "analysed"
    shutil.copytree(viewer_index, folder)
    writer = IndexWriter(folder)
    writer.write(schema.Flags, {"site": ["mlp_post"] * 2, "layer": [0, 0], "neuron": [5, 6],
                                "flag": ["polysemantic", "dead"], "score": [0.8, 1.0], "detail": ["<b>x</b>", ""]})
    writer.write(schema.LogitEffects, {"layer": [0, 0], "neuron": [5, 5], "direction": ["up", "down"], "rank": [0, 0],
                                       "token_id": [10, 11], "token_str": ["up_tok", "down_tok"], "value": [1.5, -1.2]})
    at = run_app(monkeypatch, folder, site="mlp_post", layer=0, neuron=5)
    frames = [d.value for d in at.dataframe]
    assert any("polysemantic" in set(f.get("flag", [])) for f in frames)
    assert any({"up_tok", "down_tok"} <= set(f.get("token_str", [])) for f in frames)
    at = run_app(monkeypatch, folder, page="search", flag="polysemantic")
    assert list(at.dataframe[0].value["neuron"]) == [5]


def test_regex_box_checks_a_pattern_on_the_neuron(monkeypatch, viewer_index, ix):
    at = run_app(monkeypatch, viewer_index, site="mlp_post", layer=0, neuron=5)
    at.text_input(key="ns_regex").input(r"\s")
    at.button(key="ns_regex_go").click().run()
    got = json.loads(at.json[0].proto.body)
    want = ix.regex_check(0, 5, r"\s", site="mlp_post")
    assert got["f1"] == want["f1"] and got["tokens"] == want["tokens"] > 0
    at.text_input(key="ns_regex").input("(unclosed")
    at.button(key="ns_regex_go").click().run()
    assert any("(unclosed" in e or "pattern" in e.lower() for e in errors(at)) and not at.exception


def test_hostile_corpus_text_is_escaped_on_the_neuron_page(monkeypatch, viewer_index, hostile_neuron):
    site, layer, neuron = hostile_neuron
    at = run_app(monkeypatch, viewer_index, site=site, layer=layer, neuron=neuron)
    body = html(at)
    assert PAYLOAD in shown(body)
    assert "<script" not in body and "<img" not in body and "<b>not" not in body  # as text, never as tags
    assert "[" not in body and "&#91;" in body  # no Markdown link syntax survives either
    # Markdown elements never carry corpus text (everything from the corpus goes through st.html).
    assert all("onerror" not in m.value for m in at.markdown)


def test_export_html_is_static_complete_and_escaped(tmp_path, viewer_index, ix, hostile_neuron):
    from viewer.export import export_html, neuron_file

    out = export_html(viewer_index, tmp_path / "site", progress=False)
    index_page = (out / "index.html").read_text()
    assert index_page.count('href="n/') == 1024 and index_page.count('href="h/') == 4
    page = (out / "n" / neuron_file("mlp_post", 0, 7)).read_text()
    top = ix.neuron(layer=0, neuron=7).top.iloc[0]
    assert f"{float(top['activation']):.4g}" in page and 'class="ns-tok ns-max"' in page
    assert "<script" not in page and (out / "h" / "L0-H3.html").is_file()
    site, layer, neuron = hostile_neuron
    hostile = (out / "n" / neuron_file(site, layer, neuron)).read_text()
    assert PAYLOAD in shown(hostile)
    assert "<script" not in hostile and "<img" not in hostile
    assert "](javascript" not in hostile
    with pytest.raises(Exception, match="not empty"):
        export_html(viewer_index, viewer_index.parent, progress=False)  # never writes over other files
    export_html(viewer_index, out, progress=False)  # an earlier export may be replaced


def test_cli_export_html_and_view_errors(tmp_path, viewer_index, capsys):
    from indexer.cli import main
    from viewer.launch import command

    assert main(["export-html", str(viewer_index), str(tmp_path / "out"), "--quiet"]) == 0
    assert "static site written to" in capsys.readouterr().out and (tmp_path / "out" / "index.html").is_file()
    assert main(["export-html", str(tmp_path / "nowhere"), str(tmp_path / "out2")]) == 1
    assert main(["view", str(tmp_path / "nowhere")]) == 1  # refused before any server starts
    err = capsys.readouterr().err
    assert err.count("neuroscope: error:") == 2 and "Traceback" not in err
    cmd = command([viewer_index], "127.0.0.1", 8765)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1" and cmd[cmd.index("--server.headless") + 1] == "true"
