"""Comparing whole indexes: every table, in a canonical row order."""

from __future__ import annotations

import numpy as np
import pandas as pd

from indexer.api import Index

EXAMPLE_KEY = ["site", "layer", "neuron", "kind", "bin", "rank"]
HEAD_KEY = ["layer", "head", "metric", "kind", "bin", "rank"]


def tables(out: str) -> dict[str, pd.DataFrame]:
    """Every table of an index, in a canonical row order, for comparing whole indexes."""
    with Index.open(out) as ix:
        return {
            "examples": ix.sql(f"SELECT * FROM examples ORDER BY {', '.join(EXAMPLE_KEY)}"),
            "head_examples": ix.sql(f"SELECT * FROM head_examples ORDER BY {', '.join(HEAD_KEY)}"),
            "neurons": ix.sql("SELECT * FROM neurons ORDER BY site, layer, neuron"),
            "heads": ix.sql("SELECT * FROM heads ORDER BY layer, head, metric"),
            "contexts": ix.sql("SELECT * FROM contexts ORDER BY ctx_id"),
            "vocab": ix.sql("SELECT * FROM vocab ORDER BY token_id"),
        }


def assert_same_index(a: str, b: str, exact_floats: bool = True) -> None:
    """Top-k, quantile samples with their windows, stats and contexts all equal; with
    ``exact_floats=False`` mean and std (sums added in another order) agree to rounding."""
    ta, tb = tables(a), tables(b)
    for name in ta:
        left, right = ta[name], tb[name]
        assert list(left.columns) == list(right.columns) and len(left) == len(right), name
        for column in left.columns:
            x, y = left[column].to_list(), right[column].to_list()
            if column in ("mean", "std") and not exact_floats:
                np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9, err_msg=f"{name}.{column}")
            else:
                assert _plain(x) == _plain(y), f"{name}.{column} differs"


def _plain(values: list) -> list:
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in values]
