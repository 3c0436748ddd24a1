"""User regexes cannot hang anything: RE2 where it covers the pattern, else Python's re in a
child process stopped at a time limit; either way a one-line message."""

from __future__ import annotations

import time

import pytest

from indexer.safe_regex import RegexError, compile_pattern, compile_trusted, region_hits, region_masks, token_masks
from indexer.store.query import resolve_params


def test_nested_quantifiers_run_on_re2_in_linear_time():
    safe = compile_pattern(r"(a+)+$")  # catastrophic on a backtracking engine
    assert safe.engine == "re2" and "RE2" in safe.engine_note
    started = time.perf_counter()
    (mask,) = safe.token_masks([["a"] * 40 + ["!"]])
    assert time.perf_counter() - started < 2 and mask[:40].all() and not mask[40]


def test_a_backtracking_pattern_re2_cannot_run_is_stopped_at_the_time_limit():
    safe = compile_pattern(r"(a*)*\1b", time_limit_s=1.0)  # a backreference: Python's re only
    assert safe.engine == "re" and "RE2 cannot run it" in safe.engine_note and "\n" not in safe.engine_note
    started = time.perf_counter()
    with pytest.raises(RegexError, match="stopped after 1 s") as err:
        safe.token_masks([["a" * 60]])
    assert time.perf_counter() - started < 20 and "\n" not in str(err.value)


def test_a_pattern_only_re_runs_still_gives_answers():
    (mask,) = compile_pattern(r"(?<=x)y", time_limit_s=20).token_masks([["x", "y", "y"]])
    assert mask.tolist() == [False, True, False]


@pytest.mark.parametrize("bad", ["(", "a)|(b", ""])
def test_invalid_patterns_are_one_line_errors(bad):
    with pytest.raises(RegexError) as err:
        compile_pattern(bad)
    assert "\n" not in str(err.value)


def test_a_match_counts_at_the_token_where_it_ends():
    (mask,) = token_masks(compile_trusted(r"[0-9]+"), [[" 2", "01", "9", " a"]])
    assert mask.tolist() == [True, True, True, False]


def test_region_hits_are_the_region_masks_at_the_asked_token():
    """The regex analysis asks one token per top example's window: the answer equals the
    whole window's region mask read there, on random windows of tokens that make and break
    matches (empty tokens, matches across tokens, runs cut by the window's ends)."""
    import numpy as np

    from indexer.analyses.regex import PATTERNS

    rng = np.random.default_rng(0)
    pieces = ["", " ", "a", "Zx", "AB", "0", "0x", "12", "3f", "/", "+", "=", "==", "://", "http", ".com", "@", "\n",
              "\t", " def", "(", "]", "}", "'", "<a", ">", "QUJD", "ZGVm"]
    windows = [[pieces[i] for i in rng.integers(len(pieces), size=rng.integers(1, 30))] for _ in range(400)]
    at = [int(rng.integers(len(w))) for w in windows]
    for pattern in PATTERNS.values():
        want = np.array([m[k] for m, k in zip(region_masks(pattern, windows), at)])
        assert want.any() and not want.all(), pattern  # the windows exercise both answers
        assert np.array_equal(region_hits(pattern, windows, at), want), pattern


def test_parametrised_canned_queries_bind_their_argument():
    sql, params = resolve_params("token-neurons  dog")
    assert params == {"token": " dog"} and "$token" in sql and "dog" not in sql
    sql, params = resolve_params("top-neurons-for-token x'); DROP TABLE t; --")
    assert params == {"token": "x'); DROP TABLE t; --"} and "DROP" not in sql
