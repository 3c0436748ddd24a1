"""Token saliency (indexer.analyses.saliency) against the planted model, whose neurons' deciding
tokens are known: the token neuron's is ' dog' itself, the trigram neuron's ' ice' and ' cream',
and a previous-token neuron (the planted dead neuron rewired here to read the previous token's
' ice') fires on whatever follows ' ice', so its deciding token is the one before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import planted
from indexer.analyses import runner, saliency
from indexer.analyses.common import IndexContext, Options
from indexer.cli import main
from indexer.store.query import run_sql

N = planted.NEURONS
PREV = N["dead"]  # rewired: fires after ' ice'


def with_previous_token_neuron(tokenizer):
    bridge = planted.build_bridge(tokenizer)
    state = bridge.state_dict()
    state["blocks.0.mlp.in.weight"][PREV] = 0.0
    state["blocks.0.mlp.in.weight"][PREV, planted.N_CTX + planted.FEATURES.index("prev_ice")] = 1.0
    state["blocks.0.mlp.in.bias"][PREV] = 0.0
    bridge.load_state_dict(state)
    return bridge


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("saliency")
    model = planted.write_model(root / "model", build=with_previous_token_neuron)
    return planted.index_and_analyze(root, model, only="saliency")


def examples_of(index_dir: Path, neuron: int):
    df, _ = run_sql(index_dir, f"SELECT * FROM token_saliency WHERE neuron = {neuron} ORDER BY rank, salience_rank",
                    limit=None)
    assert len(df), f"no saliency rows for neuron {neuron}"
    return df.groupby("rank")


def test_the_token_neurons_deciding_token_is_itself(index_dir):
    for _, g in examples_of(index_dir, N["token"]):
        best = g.iloc[0]
        assert best.token_str == " dog" and best.token_pos == best.pos and best.rel_drop == pytest.approx(1, abs=1e-4)
        assert np.abs(g.rel_drop.iloc[1:]).max() < 1e-4  # nothing else matters


def test_the_trigram_neurons_deciding_tokens_are_ice_and_cream(index_dir):
    for _, g in examples_of(index_dir, N["trigram"]):
        assert list(g.token_str.iloc[:2]) == [" cream", " ice"]  # equal drops: the nearest first
        assert list(g.pos.iloc[0] - g.token_pos.iloc[:2]) == [0, 1]
        assert g.rel_drop.iloc[:2].tolist() == pytest.approx([1, 1], abs=1e-4)
        assert np.abs(g.rel_drop.iloc[2:]).max() < 1e-4


def test_the_previous_token_neurons_deciding_token_is_the_one_before(index_dir):
    for _, g in examples_of(index_dir, PREV):
        best = g.iloc[0]
        assert best.token_str == " ice" and best.pos - best.token_pos == 1
        assert best.rel_drop == pytest.approx(1, abs=1e-4)
        assert np.abs(g.rel_drop.iloc[1:]).max() < 1e-4  # its own token (' cream') included


def test_every_window_token_of_every_top_example_has_a_row(index_dir):
    ex, _ = run_sql(index_dir, "SELECT site, layer, neuron, rank, pos FROM examples WHERE kind = 'top' AND rank < 5 "
                               "AND activation > 0", limit=None)
    got, _ = run_sql(index_dir, "SELECT neuron, rank, pos, count(*) AS n, min(token_pos) AS lo, max(salience_rank) AS r, "
                                "any_value(method) AS method FROM token_saliency GROUP BY ALL", limit=None)
    assert set(got.method) == {"frequent"}
    assert (got.n == np.minimum(got.pos, saliency.WINDOW)).all() and (got.r == got.n - 1).all()
    assert (got.lo == np.maximum(1, got.pos - saliency.WINDOW + 1)).all()
    baseline_positive = {(n, r) for n, r in zip(got.neuron, got["rank"])}
    assert baseline_positive <= set(zip(ex.neuron, ex["rank"]))
    assert {N["token"], N["trigram"], PREV, N["digit"]} <= set(got.neuron)


def test_other_corruptions_and_a_killed_run_resumed(index_dir, monkeypatch):
    """Random tokens and embedding noise run too (the token neuron: only its own token moves it);
    a run killed after its first chunk resumes from it and ends with the same rows."""
    options = Options(device="cpu", progress=False, saliency="random")
    runner.analyze(index_dir, only="saliency", force=True, options=options)
    rnd, _ = run_sql(index_dir, f"SELECT * FROM token_saliency WHERE neuron = {N['token']} AND salience_rank = 0", limit=None)
    assert set(rnd.token_str) == {" dog"} and set(rnd.method) == {"random"}
    monkeypatch.setattr(saliency, "CHUNK_SEQUENCES", 100)  # two examples' windows per chunk: several chunks
    calls = []
    real = IndexContext.last_token_acts

    def counted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2 and kill:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    noise = Options(device="cpu", progress=False, saliency="noise")
    monkeypatch.setattr(IndexContext, "last_token_acts", counted)
    kill = True
    with pytest.raises(KeyboardInterrupt):
        runner.analyze(index_dir, only="saliency", force=True, options=noise)
    kill, calls[:] = False, []
    runner.analyze(index_dir, only="saliency", force=False, options=noise)
    resumed, _ = run_sql(index_dir, "SELECT * FROM token_saliency ORDER BY neuron, rank, token_pos", limit=None)
    n_resumed, calls[:] = len(calls), []
    runner.analyze(index_dir, only="saliency", force=True, options=noise)
    again, _ = run_sql(index_dir, "SELECT * FROM token_saliency ORDER BY neuron, rank, token_pos", limit=None)
    assert len(calls) >= 3 and n_resumed == len(calls) - 1  # the first chunk was read back, not re-run
    assert resumed.equals(again) and set(again.method) == {"noise"}
    dog = again[(again.neuron == N["token"])]
    assert (np.abs(dog[dog.token_pos != dog.pos].activation_drop) < 1e-6).all()  # noise elsewhere cannot reach it
    assert (np.abs(dog[dog.token_pos == dog.pos].activation_drop) > 0).all()
    runner.analyze(index_dir, only="saliency", force=True, options=Options(device="cpu", progress=False))  # as it was


def test_cli_refuses_an_unknown_corruption(index_dir, capsys):
    with pytest.raises(SystemExit):
        main(["analyze", str(index_dir), "--only", "saliency", "--saliency", "blur"])
    assert "--saliency" in capsys.readouterr().err


def test_the_viewer_underlines_the_deciding_tokens(index_dir, monkeypatch):
    from helpers.viewer import open_page

    at = open_page(monkeypatch, index_dir, site="mlp_post", layer=0, neuron=PREV)
    body = "\n".join(h.proto.body for h in at.get("html"))
    underlined = body.split("text-decoration:underline")
    assert len(underlined) > 1 and "drop 100% when replaced" in body
    assert all("&#x27; ice&#x27;" in part.split("</span>")[0] for part in underlined[1:])  # only ' ice'
    assert any("Token saliency" in s.value for s in at.subheader)
