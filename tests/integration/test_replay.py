"""`neuroscope replay` (indexer.run.replay) with two copies of the planted model: one unchanged,
one whose token neuron was rewired by hand to fire on ' moon' instead of ' dog'. The unchanged
copy reproduces the index (rank correlation 1.0 for every feature, the same values); the
changed one flags that neuron and only it; a killed replay resumes; models of another shape or
tokenizer are one-line errors; the viewer shows the replay."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import planted
from indexer.api import Index
from indexer.cli import main
from indexer.run import replay_forward
from indexer.run.replay import replay

N = planted.NEURONS
MOON = planted.N_CTX + planted.FEATURES.index("moon")
DOG = planted.N_CTX + planted.FEATURES.index("dog")


def moon_instead_of_dog(tokenizer):
    bridge = planted.build_bridge(tokenizer)
    state = bridge.state_dict()
    state["blocks.0.mlp.in.weight"][N["token"], DOG] = 0.0
    state["blocks.0.mlp.in.weight"][N["token"], MOON] = 1.0
    bridge.load_state_dict(state)
    return bridge


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("replay")
    index_dir = planted.index_and_analyze(root, planted.write_model(root / "model"), only="flags")
    return {"root": root, "index": index_dir, "copy": planted.write_model(root / "copy"),
            "changed": planted.write_model(root / "changed", build=moon_instead_of_dog)}


@pytest.fixture(scope="module")
def replayed(setup) -> Path:
    return replay(setup["index"], [f"same={setup['copy']}", f"moon={setup['changed']}"], setup["root"] / "replay",
                  device="cpu", progress=False)


def test_an_unchanged_copy_reproduces_the_index(replayed):
    with Index.open(replayed) as ix:
        f = ix.sql("SELECT * FROM replay_features WHERE checkpoint = 'same'")
        ex = ix.sql("SELECT * FROM replay_examples WHERE checkpoint = 'same'")
    assert len(f) == len(planted.NEURONS) and set(f.step) == {0}
    assert (f.rank_correlation == 1.0).all() and not f.changed.any()
    assert np.array_equal(ex.new_activation, ex.activation)
    live = f[f.orig_max > 0]
    assert (live.top_ratio == 1.0).all() and np.array_equal(live.new_max, live.orig_max)


def test_the_hand_changed_neuron_is_flagged_and_only_it(replayed, setup):
    with Index.open(replayed) as ix:
        f = ix.sql("SELECT * FROM replay_features WHERE checkpoint = 'moon' ORDER BY neuron")
        top = ix.sql(f"SELECT * FROM replay_examples WHERE checkpoint = 'moon' AND neuron = {N['token']} AND kind = 'top'")
        changed = ix.sql("replay-changed")
        source = Index.open(setup["index"])
        windows = source.sql(f"SELECT rank, window_acts FROM examples WHERE neuron = {N['token']} AND kind = 'top' ORDER BY rank")
        moon = int(source.sql("SELECT token_id FROM vocab WHERE token_str = ' moon'").token_id.iloc[0])
        source.close()
    assert f[f.changed].neuron.tolist() == [N["token"]] and set(f.step) == {1}
    token = f.set_index("neuron").loc[N["token"]]
    assert token.top_ratio == 0 and token.new_top_max == 0  # ' dog' no longer moves it
    assert (f[f.neuron != N["token"]].rank_correlation == 1.0).all()
    assert (top.new_activation == 0).all() and (top.activation == 1).all()
    for r, s in zip(top.sort_values("rank").itertuples(), windows.window_acts):  # the new neuron, token by token
        assert len(r.window_acts) == len(s) and list(r.window_acts) == [float(t == moon) for t in r.window_token_ids]
    if token.new_max > 0:  # where it fires now, if the dog examples' contexts hold a ' moon'
        assert token.new_max_token_str == " moon"
    assert changed[["neuron", "checkpoint"]].values.tolist() == [[N["token"], "moon"]]


def test_a_killed_replay_resumes_and_more_models_are_added(setup, replayed, monkeypatch, tmp_path):
    out = tmp_path / "r"
    monkeypatch.setattr(replay_forward, "CHUNK_CONTEXTS", 8)
    calls = []
    real = replay_forward._chunk

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 and kill:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(replay_forward, "_chunk", counted)
    models = [f"same={setup['copy']}", f"moon={setup['changed']}"]
    kill = True
    with pytest.raises(KeyboardInterrupt):
        replay(setup["index"], models, out, device="cpu", progress=False)
    with Index.open(out) as ix:
        assert ix.manifest["status"] == "partial"
    kill, calls[:] = False, []
    replay(setup["index"], models, out, device="cpu", progress=False)
    n_contexts = Index.open(out).manifest["replay"]["contexts"]
    per_model = -(-n_contexts // 8)
    assert len(calls) == 2 * per_model - 1  # the first chunk was read back
    calls[:] = []
    replay(setup["index"], models + [f"again={setup['copy']}"], out, device="cpu", progress=False)
    assert len(calls) == per_model  # only the new model ran
    with Index.open(out) as ix, Index.open(replayed) as whole:
        order = "ORDER BY checkpoint, site, layer, neuron, kind, bin, rank"
        got = ix.sql(f"SELECT * FROM replay_examples WHERE checkpoint != 'again' {order}")
        assert got.drop(columns="window_acts").equals(whole.sql(f"SELECT * FROM replay_examples {order}")
                                                     .drop(columns="window_acts"))
        steps = ix.sql("SELECT DISTINCT checkpoint, step FROM replay_features ORDER BY step").values.tolist()
        assert steps == [["same", 0], ["moon", 1], ["again", 2]] and ix.manifest["status"] == "complete"
    replay(setup["index"], models[:1], out, device="cpu", progress=False)  # a model left out is dropped
    with Index.open(out) as ix:
        assert ix.sql("SELECT DISTINCT checkpoint FROM replay_features").checkpoint.tolist() == ["same"]


def test_models_of_another_shape_or_tokenizer_are_one_line_errors(setup, tiny_model_dir, tmp_path, capsys):
    other = tmp_path / "other-tokenizer"
    shutil.copytree(setup["copy"], other)
    from indexer.inputs.data import tokenizer_dir

    (other / "tokenizer.json").write_bytes((tokenizer_dir() / "tokenizer.json").read_bytes())
    for model, message in ((str(tiny_model_dir), "not the shape of the index's model"),
                           (str(other), "its tokenizer is not the index's (token 8192")):
        assert main(["replay", str(setup["index"]), "--model", model, "--out", str(tmp_path / "x"), "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert main(["replay", str(setup["index"]), "--model", str(setup["copy"]), "--out", str(setup["index"])]) == 1
    assert "write to another folder" in capsys.readouterr().err


def test_the_viewer_shows_the_replay(replayed, setup, monkeypatch):
    from helpers.viewer import open_page

    at = open_page(monkeypatch, f"{setup['index']}:{replayed}", ix="replay")
    assert [h.value for h in at.header] == ["Replay through other checkpoints"]
    at = open_page(monkeypatch, f"{setup['index']}:{replayed}", ix="replay", page="replay")
    assert at.title[0].value == f"Replay · mlp_post · layer 0 · neuron {N['token']}"  # the most changed first
    body = "\n".join(h.proto.body for h in at.get("html"))
    assert "ix=ix" in body and "index: 1&#41;" in body  # a link to the neuron in the index; the index's value
