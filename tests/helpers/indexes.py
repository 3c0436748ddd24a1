"""Comparing whole indexes: every table, in a canonical row order."""

from __future__ import annotations

from pathlib import Path

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
            "head_attention": ix.sql(f"SELECT * FROM head_attention ORDER BY {', '.join(HEAD_KEY)}")
            if (Path(out) / "head_attention").is_dir() else pd.DataFrame(),
            "contexts": ix.sql("SELECT * FROM contexts ORDER BY ctx_id"),
            "vocab": ix.sql("SELECT * FROM vocab ORDER BY token_id"),
        }


def index_shards_and_merge(cfg, folder: Path, n: int = 2) -> str:
    """``cfg`` indexed as ``n`` shards (``folder/shardI``), merged into ``folder/merged``; its path."""
    from dataclasses import replace

    from indexer.run.engine import index
    from indexer.run.merge import merge

    shards = []
    for i in range(n):
        shard = replace(cfg, out=str(Path(folder) / f"shard{i}"), shard=(i, n))
        index(shard, progress=False)
        shards.append(shard.out)
    return str(merge(shards, str(Path(folder) / "merged"), progress=False))


def assert_same_index(a: str, b: str) -> None:
    """Top-k, quantile samples with their windows, stats and contexts all equal, floats bit for
    bit: mean and std too, whatever the shards, resumes or backend (the sums are exact)."""
    ta, tb = tables(a), tables(b)
    for name in ta:
        left, right = ta[name], tb[name]
        assert list(left.columns) == list(right.columns) and len(left) == len(right), name
        for column in left.columns:
            x, y = left[column].to_list(), right[column].to_list()
            if left[column].dtype.kind == "f":
                bits_x, bits_y = left[column].to_numpy().tobytes(), right[column].to_numpy().tobytes()
                assert bits_x == bits_y, f"{name}.{column} differs in its bits"
            assert _plain(x) == _plain(y) or _same_with_nan(x, y), f"{name}.{column} differs"


def _same_with_nan(x: list, y: list) -> bool:
    """Float columns: NaN (an empty feature's mean) equals NaN; the bits were compared above."""
    try:
        return bool(np.array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64), equal_nan=True))
    except (TypeError, ValueError):
        return False


def _plain(values: list) -> list:
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in values]
