"""The pattern scores rank what they claim: a planted base64 neuron, digits neuron and bracket
neuron each come first in their canned query beside ten dense random neurons (whose top
examples fall in base64 runs by chance), and the specificity is checked against the counts
recomputed by brute force from the activations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import planted, planted_patterns
from indexer.analyses.common import IndexContext, Options
from indexer.analyses.regex import PATTERNS, sample_contexts
from indexer.pattern_score import scores, wilson_lower
from indexer.safe_regex import region_masks
from indexer.store.query import run_sql

P = planted_patterns.PATTERNS


@pytest.fixture(scope="module")
def pattern_index(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("patterns")
    return planted.index_and_analyze(root, planted_patterns.write_model(root / "model"), only="regex", window_before=24)


@pytest.mark.parametrize("query, neuron", [
    ("base64-neurons", P["base64"]), ("pattern-neurons digits", P["digits"]),
    ("pattern-neurons open_bracket", P["open_bracket"]), ("pattern-neurons base64", P["base64"]),
])
def test_the_planted_neuron_ranks_first_beside_dense_random_neurons(pattern_index, query, neuron):
    df, _ = run_sql(pattern_index, query)
    assert {"layer", "neuron", "score", "reason"} <= set(df.columns)
    assert df.neuron.iloc[0] == neuron, df[["neuron", "score", "recall", "base_rate", "f1"]].head(6)
    assert df.score.iloc[0] >= 0.8 and df.score.iloc[1] < 0.5, df.head(3)


def test_regex_neurons_name_each_planted_neuron_by_its_pattern_and_no_dense_one(pattern_index):
    df, _ = run_sql(pattern_index, "regex-neurons")
    assert dict(zip(df.neuron, df.pattern_name)) == {n: name for name, n in P.items()}, df


def test_dense_random_neurons_peak_in_base64_runs_yet_score_low(pattern_index):
    """The case the scores must survive: dense neurons whose top examples sit in base64 runs."""
    df, _ = run_sql(pattern_index, "SELECT neuron, top_fraction, specificity, \"precision\" FROM regex_scores "
                                   f"WHERE pattern_name = 'base64' AND neuron >= {len(P)}")
    assert (df.top_fraction > 0.5).any(), df  # some peak in runs...
    assert (df.specificity < 0.5).all(), df  # ...but fire everywhere
    planted_row = run_sql(pattern_index, "SELECT \"precision\", specificity FROM regex_scores WHERE pattern_name = "
                                         f"'base64' AND neuron = {P['base64']}")[0].iloc[0]
    assert planted_row["precision"] < df["precision"].max()  # precision (and F1) would rank a dense neuron higher
    old, _ = run_sql(pattern_index, "SELECT neuron FROM regex_scores WHERE pattern_name = 'base64' "
                                    "ORDER BY f1 * coalesce(top_fraction, 1) DESC")  # the score before specificity
    assert old.neuron.iloc[0] != P["base64"]


def test_specificity_equals_brute_force_over_the_sample(pattern_index):
    """regex_scores' counts and specificity from the activations, recomputed token by token."""
    ix = IndexContext(pattern_index, Options(device="cpu", progress=False))
    try:
        contexts = sample_contexts(ix, ix.options.sample_tokens)
        ids = list(contexts)
        strings = [ix.vocab[contexts[c]].tolist() for c in ids]
        acts = np.concatenate([a[("mlp_post", 0)][1:] for _, a in ix.all_token_acts([contexts[c] for c in ids], [0], "t")])
    finally:
        ix.close()
    stored, _ = run_sql(pattern_index, "SELECT * FROM regex_scores ORDER BY pattern_name, neuron", limit=None)
    maxes = run_sql(pattern_index, 'SELECT "max" FROM neurons ORDER BY neuron')[0]["max"].to_numpy()
    active = acts > 0.5 * maxes[None, :]
    for name in ("base64", "digits", "open_bracket"):
        m = np.concatenate([x[1:] for x in region_masks(PATTERNS[name], strings)]).astype(bool)
        expect = scores((m[:, None] & active).sum(0), m.sum(), active.sum(0), len(m))
        got = stored[stored.pattern_name == name].set_index("neuron")
        np.testing.assert_allclose(got.specificity.to_numpy(), expect["specificity"], atol=1e-9)
        np.testing.assert_allclose(got.base_rate.to_numpy(), m.mean(), atol=1e-12)
        assert (got.n_active.to_numpy() == active.sum(0)).all()


def test_wilson_lower_bound_and_specificity_by_hand():
    assert wilson_lower(np.array([0]), np.array([0]))[0] == 0.0
    assert wilson_lower(np.array([10]), np.array([10]))[0] == pytest.approx(10 / (10 + 1.96**2))
    # all 200 active tokens inside a pattern that matches 10% of tokens
    s = scores(200, 1000, 200, 10_000)
    assert s["recall"] == 1.0 and s["precision"] == 0.2 and s["specificity"] == pytest.approx(
        (200 / (200 + 1.96**2) - 0.1) / 0.9)
    # active inside the pattern exactly as often as anywhere: specificity 0
    assert scores(100, 1000, 1000, 10_000)["specificity"] == 0.0


def test_an_index_analyzed_before_specificity_still_opens(pattern_index, tmp_path):
    """regex_scores files without this version's optional columns read them as NULL."""
    import shutil

    import pyarrow.parquet as pq

    old = tmp_path / "old"
    shutil.copytree(pattern_index, old)
    for f in (old / "analyses" / "regex_scores").rglob("*.parquet"):
        pq.write_table(pq.read_table(f).drop(["specificity", "base_rate", "n_active"]), f)
    df, _ = run_sql(old, "base64-neurons")
    assert len(df) and df.score.isna().all() and df.f1.notna().all()


def test_an_unknown_pattern_name_is_one_error_naming_the_patterns(pattern_index):
    from indexer.errors import QueryError

    with pytest.raises(QueryError, match=r"pattern-neurons 'nope'.*base64, close_bracket"):
        run_sql(pattern_index, "pattern-neurons nope")
