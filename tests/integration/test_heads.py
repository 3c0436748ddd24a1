"""Head scores, head metrics, the head wiki, composition scores and head attention, checked on
a hand-built induction circuit (tests/helpers/induction.py) whose answer is known, and
composition scores against a direct computation on a tiny random model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.configs import base_config
from helpers.induction import INDUCTION_HEAD, PREV_HEAD, induction_applies, write_induction_corpus, write_induction_model
from helpers.models import write_native_model
from indexer.api import Index
from indexer.errors import ConfigError
from indexer.forward.head_composition import composition_scores
from indexer.forward.sites import plan_sites
from indexer.inputs.models import load_model
from indexer.run.engine import index
from indexer.store.canned import CANNED


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The induction circuit indexed over its corpus: (model, index, ctx_id -> token ids)."""
    root = tmp_path_factory.mktemp("induction")
    model = load_model(str(write_induction_model(root / "model")))
    corpus = write_induction_corpus(root / "corpus.jsonl", model.tokenizer)
    cfg = base_config(str(root / "model"), str(root / "idx"), corpus=[str(corpus)], tokens=4000, ctx_len=64, top_k=5)
    index(cfg, progress=False)
    ix = Index.open(cfg.out)
    ctx = ix.sql("SELECT ctx_id, token_ids FROM contexts")
    tokens = {int(c): [int(t) for t in ids] for c, ids in zip(ctx["ctx_id"], ctx["token_ids"])}
    return model, ix, tokens


def examples(ix, head: tuple[int, int], metric: str, kind: str = "top"):
    return ix.sql("SELECT * FROM head_examples WHERE layer = ? AND head = ? AND metric = ? AND kind = ? ORDER BY rank",
                  [head[0], head[1], metric, kind])


def test_attention_only_model_indexes_heads_only(planted):
    model, ix, _ = planted
    assert model.info.attn_only
    assert [(s.name, s.layer) for s in plan_sites(model.info)] == [("heads", 0), ("heads", 1)]
    assert {s["name"] for s in ix.manifest["sites"]} == {"heads"}
    with pytest.raises(ConfigError, match="attention-only"):
        plan_sites(model.info, ("heads", "mlp_post"))


def test_head_scores_rank_the_planted_heads_first(planted):
    _, ix, _ = planted
    for table in ("head_scores", "head_wiki"):
        for column, head in (("prev_token", PREV_HEAD), ("induction", INDUCTION_HEAD)):
            ranked = ix.sql(f"SELECT layer, head, {column} AS s FROM {table} ORDER BY s DESC")
            assert (ranked["layer"][0], ranked["head"][0]) == head, (table, column)
            assert ranked["s"][0] > 0.95 and ranked["s"][1] < 0.1, (table, column, ranked)
    wiki = ix.sql("SELECT * FROM head_wiki").set_index(["layer", "head"])
    assert wiki.loc[PREV_HEAD, "mean_attn_distance"] == pytest.approx(1.0, abs=1e-3)
    assert wiki.loc[PREV_HEAD, "self_attention"] < 1e-3
    # the canned query and the wiki agree
    assert tuple(ix.sql(CANNED["induction-heads"][1])[["layer", "head"]].iloc[0]) == INDUCTION_HEAD


@pytest.mark.parametrize("metric", ["max_attn", "out_norm", "value_weighted"])
def test_induction_head_top_examples_are_induction_positions(planted, metric):
    _, ix, tokens = planted
    top = examples(ix, INDUCTION_HEAD, metric)
    assert len(top) == 5
    for ctx_id, pos, value in zip(top["ctx_id"], top["pos"], top["activation"]):
        assert tokens[ctx_id][0] == 0  # contexts start with BOS
        assert induction_applies(tokens[ctx_id], pos), (metric, ctx_id, pos)
        assert value > 0.99
    # and the other heads' top examples are not this clean: a uniform head never reaches it
    other = examples(ix, (1, 1), metric)
    assert other["activation"].max() < 0.6


def test_induction_head_top_entropy_is_where_it_has_nothing_to_copy(planted):
    """Entropy ranks the other way: the highest-entropy positions of an induction head are
    those with no earlier occurrence, where it spreads evenly over every token so far."""
    _, ix, tokens = planted
    top = examples(ix, INDUCTION_HEAD, "entropy")
    assert len(top) == 5
    for ctx_id, pos, value in zip(top["ctx_id"], top["pos"], top["activation"]):
        assert not induction_applies(tokens[ctx_id], pos)
        assert value == pytest.approx(math.log(pos + 1), rel=1e-3)  # uniform over BOS..pos


def test_previous_token_head_top_max_attn(planted):
    _, ix, tokens = planted
    top = examples(ix, PREV_HEAD, "max_attn")
    attn = ix.sql("SELECT * FROM head_attention WHERE layer = ? AND head = ? AND metric = 'max_attn' AND kind = 'top' "
                  "ORDER BY rank", list(PREV_HEAD))
    assert len(top) == 5 and list(attn["pos"]) == list(top["pos"]) and list(attn["ctx_id"]) == list(top["ctx_id"])
    for pos, value, src, w in zip(top["pos"], top["activation"], attn["src_pos"], attn["weights"]):
        assert pos >= 2 and value > 0.99  # position 1's previous token is BOS, which max_attn excludes
        assert list(src) == [pos - 1] and w[0] > 0.99


def test_head_attention_points_at_the_induction_source(planted):
    _, ix, tokens = planted
    attn = ix.sql("SELECT * FROM head_attention WHERE layer = ? AND head = ? AND metric = 'max_attn' AND kind = 'top'",
                  list(INDUCTION_HEAD))
    assert len(attn) == 5
    for ctx_id, pos, src, w in zip(attn["ctx_id"], attn["pos"], attn["src_pos"], attn["weights"]):
        ids = tokens[ctx_id]
        earlier = [j for j in range(1, pos) if ids[j] == ids[pos]]
        assert src[0] == earlier[-1] + 1 and w[0] > 0.99  # the token after the previous occurrence
    # every head example has exactly one attention row, sparse and sorted
    n = ix.sql("SELECT count(*) AS n FROM head_examples")["n"][0]
    joined = ix.sql("SELECT count(*) AS n FROM head_attention JOIN head_examples "
                    "USING (layer, head, metric, kind, bin, rank, ctx_id, pos)")["n"][0]
    assert n == joined > 0
    all_rows = ix.sql("SELECT src_pos, weights, pos FROM head_attention")
    for src, w, pos in zip(all_rows["src_pos"], all_rows["weights"], all_rows["pos"]):
        assert len(src) == len(w) <= 32 and all(s <= pos for s in src)
        assert all(x >= 0.01 for x in w) and list(w) == sorted(w, reverse=True)


def test_planted_composition_is_the_top_pair(planted):
    _, ix, _ = planted
    top = ix.sql(CANNED["composing-heads"][1]).iloc[0]
    assert (top["layer_a"], top["head_a"], top["layer_b"], top["head_b"], top["kind"]) == (*PREV_HEAD, *INDUCTION_HEAD, "k")
    rest = ix.sql("SELECT max(score) AS s FROM head_composition WHERE NOT (layer_a = 0 AND head_a = 0 AND layer_b = 1 "
                  "AND head_b = 0 AND kind = 'k')")["s"][0]
    assert top["score"] > 0.05 and rest < 1e-6


def test_composition_scores_equal_direct_computation(tmp_path):
    model = load_model(str(write_native_model(tmp_path / "tiny", n_layers=3)))
    got = composition_scores(model.bridge, [0, 1, 2])
    attn = [model.bridge.blocks[layer].attn for layer in range(3)]
    w = [{k: getattr(a, k).detach().double().numpy() for k in ("W_Q", "W_K", "W_V", "W_O")} for a in attn]
    fro = np.linalg.norm
    n_heads = w[0]["W_Q"].shape[0]
    want = {}
    for la in range(3):
        for lb in range(la + 1, 3):
            for ha in range(n_heads):
                ov_a = w[la]["W_V"][ha] @ w[la]["W_O"][ha]
                for hb in range(n_heads):
                    qk_b = w[lb]["W_Q"][hb] @ w[lb]["W_K"][hb].T
                    ov_b = w[lb]["W_V"][hb] @ w[lb]["W_O"][hb]
                    want[(la, ha, lb, hb, "q")] = fro(ov_a @ qk_b) / (fro(ov_a) * fro(qk_b))
                    want[(la, ha, lb, hb, "k")] = fro(ov_a @ qk_b.T) / (fro(ov_a) * fro(qk_b))
                    want[(la, ha, lb, hb, "v")] = fro(ov_a @ ov_b) / (fro(ov_a) * fro(ov_b))
    keys = list(zip(got["layer_a"], got["head_a"], got["layer_b"], got["head_b"], got["kind"]))
    assert sorted(keys) == sorted(want) and len(keys) == 3 * 3 * n_heads**2
    np.testing.assert_allclose(got["score"], [want[k] for k in keys], rtol=1e-5)
    # Q- and K-composition differ on random weights (the transpose matters for the product)
    assert not np.allclose(got["score"][got["kind"] == "q"], got["score"][got["kind"] == "k"])


def test_the_embedded_toy_attn_2l_has_a_previous_token_head_and_induction_heads():
    """The model the demo's head pages show: trained, not hand-set (data/models/toy-attn-2l)."""
    from indexer.forward.head_scores import head_scores

    s = head_scores(load_model("toy-attn-2l"), [0, 1])
    layer0, layer1 = s["layer"] == 0, s["layer"] == 1
    assert s["prev_token"][layer0].max() >= 0.8 and s["induction"][layer0].max() < 0.05
    assert s["induction"][layer1].min() >= 0.8  # all four layer-1 heads
    assert int(s["layer"][np.argmax(s["induction"])]) == 1
