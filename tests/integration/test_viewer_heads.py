"""The viewer's head pages with AppTest on the real toy-1l index: the head wiki page with its
links and composing pairs, attention drawn on head examples (escaped), the entropy note, and
the same in the static export."""

from __future__ import annotations

import html as html_lib
import re
import shutil

import pytest

from helpers.viewer import errors, html, run_app, shown, title
from indexer.api import Index
from indexer.store import schema
from indexer.store.writer import IndexWriter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ix(viewer_index):
    with Index.open(viewer_index) as ix:
        yield ix


def _composed_copy(tmp_path, viewer_index):
    """A copy of the index with head_composition rows (toy-1l has one layer: none of its own)."""
    folder = tmp_path / "composed"
    shutil.copytree(viewer_index, folder)
    IndexWriter(folder).write(schema.HeadComposition, {
        "layer_a": [0, 0, 0], "head_a": [1, 0, 2], "layer_b": [0, 0, 0], "head_b": [3, 2, 1],
        "kind": ["k", "q", "v"], "score": [0.9, 0.5, 0.7]})
    return folder


def test_heads_page_wiki_links_and_composing_pairs(monkeypatch, tmp_path, viewer_index):
    from urllib.parse import parse_qsl, urlsplit

    folder = _composed_copy(tmp_path, viewer_index)
    at = run_app(monkeypatch, folder, page="heads")
    assert title(at) == "Heads" and not errors(at)
    wiki, pairs = at.dataframe[0].value, at.dataframe[1].value
    with Index.open(folder) as ix:
        want = ix.sql("SELECT * FROM head_wiki ORDER BY layer, head")
        metrics = ix.sql("SELECT DISTINCT metric FROM heads")["metric"].tolist()
    assert len(wiki) == 4 == len(want)
    assert list(wiki["induction"]) == pytest.approx(list(want["induction"]))
    assert list(wiki["mean_attn_distance"]) == pytest.approx(list(want["mean_attn_distance"]))
    for row in wiki.to_dict("records"):
        for m in metrics:  # a link per metric, to that head's page for that metric
            assert dict(parse_qsl(urlsplit(row[f"{m} examples"]).query)) == {
                "layer": str(row["layer"]), "head": str(row["head"]), "metric": m}
    # Composition: best first, kind named, both heads linked.
    assert list(pairs["score"]) == pytest.approx([0.9, 0.7, 0.5])
    assert list(pairs["kind"]) == ["K-composition", "V-composition", "Q-composition"]
    first = dict(parse_qsl(urlsplit(pairs["earlier head"].iloc[0]).query))
    later = dict(parse_qsl(urlsplit(pairs["later head"].iloc[0]).query))
    assert (first["layer"], first["head"], later["layer"], later["head"]) == ("0", "1", "0", "3")
    assert pairs["earlier head"].iloc[0].endswith("#head-0.1")  # what the link cell shows
    at = run_app(monkeypatch, folder, **later)  # following a link opens that head's page
    assert title(at) == f"Head 0.3 · {later['metric']}" and not errors(at)
    comp = [d.value for d in at.dataframe if "kind" in d.value.columns]  # its pairs, on its page
    assert comp and list(comp[0]["head_a"]) == [1] and list(comp[0]["score"]) == pytest.approx([0.9])


def test_heads_page_on_an_index_without_the_head_tables(monkeypatch, tmp_path, viewer_index):
    folder = tmp_path / "older"
    shutil.copytree(viewer_index, folder)
    (folder / "head_wiki.parquet").unlink()
    shutil.rmtree(folder / "head_attention")
    at = run_app(monkeypatch, folder, page="heads")
    notes = [i.value for i in at.info]
    assert not errors(at) and any("head_wiki" in n and "neuroscope index" in n for n in notes)
    assert any("fewer than two layers" in n for n in notes)  # toy-1l: one layer of heads
    at = run_app(monkeypatch, folder, layer=0, head=1, metric="max_attn")
    assert not errors(at) and not re.search(r'class="[^"]*ns-src', html(at))
    assert any("head_attention" in c.value and "neuroscope index" in c.value for c in at.caption)


def _block(body: str, row) -> str:
    """The HTML of one top example on a head page: its header up to the next header."""
    head = f'#{int(row["rank"])} · max'
    where = f'ctx {int(row["ctx_id"])}, pos {int(row["pos"])}'
    for part in body.split('<div class="ns-head">')[1:]:
        if shown(part[:400]).startswith(head) and where in shown(part[:400]):
            return part.split('<details class="ns-ctx">')[0]
    raise AssertionError(f"no block for {head} {where}")


def test_head_examples_show_where_they_attend(monkeypatch, viewer_index, ix):
    att = ix.sql("SELECT a.*, e.window_start, e.window_token_ids, e.ctx_id AS e_ctx, e.pos AS e_pos "
                 "FROM head_attention a JOIN head_examples e USING (layer, head, metric, kind, bin, rank) "
                 "WHERE a.kind = 'top' ORDER BY a.layer, a.head, a.metric, a.rank")
    assert len(att) and (att["ctx_id"] == att["e_ctx"]).all() and (att["pos"] == att["e_pos"]).all()

    def split(r):
        n = len(r.window_token_ids)
        inside = [(int(p), float(w)) for p, w in zip(r.src_pos, r.weights) if 0 <= p - r.window_start < n]
        outside = [(int(p), float(w)) for p, w in zip(r.src_pos, r.weights) if not 0 <= p - r.window_start < n]
        return inside, outside

    # An example with sources both inside and outside its window (contexts are longer than windows).
    row = next(r for r in att.itertuples() if all(split(r)))
    inside, outside = split(row)
    at = run_app(monkeypatch, viewer_index, layer=int(row.layer), head=int(row.head), metric=row.metric)
    body = html(at)
    block = _block(body, row._asdict())
    window = block.split('<div class="ns-ex">')[1].split("</div>")[0]
    spans = re.findall(r'<span class="([^"]*)"[^>]*?(?:title="([^"]*)")?>', window)
    assert len(spans) == len(row.window_token_ids)
    marked = {i: html_lib.unescape(t) for i, (cls, t) in enumerate(spans) if "ns-src" in cls}
    assert set(marked) == {p - row.window_start for p, _ in inside}  # exactly the stored sources
    for p, w in inside:
        assert marked[p - row.window_start].endswith(f"attn {w:.3g}")  # hover shows the weight
    vocab = dict(zip(ix.vocab()["token_id"], ix.vocab()["token_str"]))
    context = ix.contexts([int(row.ctx_id)])["token_ids"].iloc[0]
    notes = [shown(n) for n in re.findall(r'<div class="ns-attn"[^>]*>(.*?)</div>', block)]
    for p, w in sorted(outside, key=lambda pw: -pw[1])[:5]:
        assert f"← attends to {vocab[int(context[p])]!r} at pos {p} ({w:.3g})" in notes
    assert "<script" not in body and "<img" not in body  # hostile contexts stay text here too


def test_attention_marks_escape_hostile_tokens():
    from viewer.render import example_window

    vocab = ["<script>alert(1)</script>", "a", "<img src=x onerror=alert(2)>", "b"]
    row = {"window_token_ids": [1, 3], "window_acts": [0.5, 1.0], "window_start": 2, "pos": 3}
    out = example_window(row, vocab, 1.0, 0.0, attention=([0, 2, 1], [0.6, 0.3, 0.1]), context=[0, 2, 1, 3])
    assert "<script" not in out and "<img" not in out
    assert "← attends to '<script>alert(1)</script>' at pos 0 (0.6)" in shown(out)  # as text
    assert "&lt;script&gt;alert&#40;1&#41;" in out
    assert shown(out).count("← attends to") == 2 and 'title="&#x27;a&#x27;: 0.5 · attn 0.3"' in out


def test_entropy_head_page_says_its_top_examples_are_diffuse(monkeypatch, viewer_index, ix):
    at = run_app(monkeypatch, viewer_index, layer=0, head=1, metric="entropy")
    help_text = ix.manifest["head_metrics"]["entropy"]
    line = [c.value for c in at.caption if c.value.startswith("entropy:")]
    assert len(line) == 1 and help_text in line[0] and "most diffuse" in line[0] and "not where" in line[0]
    at = run_app(monkeypatch, viewer_index, layer=0, head=1, metric="max_attn")
    assert not any("most diffuse" in c.value for c in at.caption)


def test_export_head_pages_draw_attention_escaped(tmp_path, viewer_index, ix):
    from viewer.export import export_html

    out = export_html(viewer_index, tmp_path / "site", progress=False)
    row = ix.sql("SELECT layer, head, src_pos, weights FROM head_attention WHERE kind = 'top' AND metric = 'max_attn' "
                 "ORDER BY layer, head, rank LIMIT 1").iloc[0]
    page = (out / "h" / f"L{int(row['layer'])}-H{int(row['head'])}.html").read_text()
    assert "ns-src" in page and f"attn {float(row['weights'][0]):.3g}" in page
    assert "most diffuse" in page and "<script" not in page and "<img" not in page
