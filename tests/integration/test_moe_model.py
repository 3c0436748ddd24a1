"""A mixture-of-experts model (tiny random Mixtral): indexes its heads without a traceback,
says in one line why its expert neurons are not indexed, refuses MLP sites in one line; head
metrics equal the eager attention weights; analyze runs, and its expert-usage table equals
the routing read from the model's own experts module; the viewer opens a head page."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import hf_archs
from helpers.viewer import open_page
from indexer import cli
from indexer.api import Index

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixtral")
    return hf_archs.build("mixtral", tmp / "model"), tmp


def test_heads_are_indexed_and_the_experts_skipped_in_one_line(moe, capfd, monkeypatch):
    folder, tmp = moe
    out = tmp / "index"
    assert cli.main(["index", "--model", str(folder), "--corpus", "code", "--out", str(out), "--tokens", "600",
                     "--ctx-len", "32", "--batch-size", "8", "--top-k", "4", "--per-bin", "2",
                     "--store-contexts", "all", "--quiet"]) == 0
    notes = [line for line in capfd.readouterr().err.splitlines() if "experts" in line]
    assert len(notes) == 1 and "mixture of 4 experts (top-2)" in notes[0] and "only heads" in notes[0]
    model = hf_archs.load_eager(folder)
    with Index.open(out) as ix:
        contexts = dict(zip(ix.sql("SELECT ctx_id FROM contexts").ctx_id, ix.sql("SELECT token_ids FROM contexts").token_ids))
        ex = ix.sql("SELECT layer, head, metric, value, ctx_id, pos FROM head_examples WHERE metric IN ('max_attn', 'entropy')")
        assert len(ix.sql("SELECT * FROM neurons")) == 0
    refs = {c: hf_archs.reference(model, "mixtral", [int(t) for t in contexts[c]]) for c in contexts}
    got, want = [], []
    for layer, head, metric, value, c, p in ex.itertuples(index=False):
        attn = refs[c][("attn", int(layer))]
        got.append(value)
        want.append(hf_archs.head_reference(attn)[metric][head, p])
    assert len(got) > 0 and np.abs(np.array(got) - np.array(want)).max() / np.log(32) <= 1e-5
    assert cli.main(["analyze", str(out), "--top-ranks", "1", "--quiet"]) == 0
    with Index.open(out) as ix:
        usage = ix.sql("SELECT layer, expert, n_tokens, n_tokens_read, share FROM expert_usage ORDER BY layer, expert")
    for layer in range(hf_archs.N_LAYERS):
        want = sum(refs[c][("route", layer)][1:].sum(axis=0) for c in contexts)  # every context: --store-contexts all
        rows = usage[usage.layer == layer]
        assert rows.n_tokens.tolist() == want.astype(int).tolist() and rows.share.sum() == pytest.approx(2.0)
    assert set(usage.n_tokens_read) == {sum(len(t) - 1 for t in contexts.values())}
    at = open_page(monkeypatch, out, page="head", layer=1, head=2)
    assert "head" in at.title[0].value.lower() and "2" in at.title[0].value, at.title[0].value


def test_mlp_sites_of_a_moe_model_are_refused_in_one_line(moe, capsys):
    folder, tmp = moe
    assert cli.main(["index", "--model", str(folder), "--corpus", "code", "--out", str(tmp / "x"),
                     "--sites", "mlp_post", "--quiet"]) == 1
    err = capsys.readouterr().err  # transformers' own "Loading weights" bar may come first
    ours = [line for line in err.splitlines() if line.startswith("neuroscope")]
    assert "Traceback" not in err and len(ours) == 1
    assert ours[0].startswith("neuroscope: error: --sites mlp_post:") and "experts" in ours[0]
