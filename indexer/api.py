"""The Python API: ``Index.open(DIR)`` hands back pandas DataFrames.

    idx = Index.open("out/demo")
    idx.neuron(layer=0, neuron=123).top[["activation", "context_text"]]

Every method goes through the same locked-down connection and query path as ``neuroscope
sql`` (see indexer.store.query); values are always bound as ``?`` parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from indexer.errors import QueryError
from indexer.store.query import DEFAULT_TIMEOUT_S, Params, open_index, run_sql
from indexer.store.schema import BY_NAME
from indexer.store.manifest import read_manifest


@dataclass(frozen=True)
class NeuronRecord:
    """Everything the index holds about one feature.

    Attributes:
      stats: its row of `neurons` (or `heads`), column -> value.
      top: its top examples (kind 'top'), by rank.
      quantiles: its quantile examples, by bin then rank.
    """

    stats: dict[str, Any]
    top: pd.DataFrame
    quantiles: pd.DataFrame


@dataclass(frozen=True)
class HeadRecord(NeuronRecord):
    """The same for one metric of one attention head (rows of `heads` / `head_examples`)."""


class Index:
    """A read-only view of one index directory."""

    def __init__(self, root: Path, conn: duckdb.DuckDBPyConnection, manifest: dict[str, Any]):
        self.root = root
        self.conn = conn
        self._manifest = manifest

    @classmethod
    def open(cls, index_dir: Path | str) -> "Index":
        """Open an index; IndexDirError if ``index_dir`` has no manifest.json."""
        manifest = read_manifest(index_dir)
        return cls(Path(index_dir), open_index(index_dir), manifest)

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    def sql(
        self, query: str, params: Params = None, limit: int | None = None, timeout_s: float | None = DEFAULT_TIMEOUT_S
    ) -> pd.DataFrame:
        """Run a read-only query or a canned query name: the same lock-down and default time
        limit as `neuroscope sql` (``timeout_s=None`` waits as long as it takes); no row cap by
        default."""
        return run_sql(self.conn, query, params, limit=limit, timeout_s=timeout_s, setting="timeout_s")[0]

    def neurons(self, site: str | None = None, layer: int | None = None) -> pd.DataFrame:
        """Rows of `neurons`, optionally for one site and/or layer."""
        return self._select("neurons", {"site": site, "layer": layer}, "site, layer, neuron")

    def neuron(self, layer: int, neuron: int, site: str = "mlp_post") -> NeuronRecord:
        """Stats and examples of one neuron; QueryError if the index does not hold it."""
        key = {"site": site, "layer": layer, "neuron": neuron}
        stats = self._select("neurons", key, "neuron")
        if stats.empty:
            raise QueryError(f"no neuron site={site} layer={layer} neuron={neuron} in {self.root}")
        examples = self._select("examples", key, "bin, rank")
        return NeuronRecord(stats.iloc[0].to_dict(), *_split(examples))

    def examples(self, layer: int | None = None, neuron: int | None = None, site: str | None = "mlp_post",
                 kind: str | None = None, corpus: str | None = None) -> pd.DataFrame:
        """Rows of `examples`; None leaves a column unfiltered."""
        filters = {"site": site, "layer": layer, "neuron": neuron, "kind": kind, "corpus": corpus}
        return self._select("examples", filters, "site, layer, neuron, kind DESC, bin, rank")  # top first

    def heads(self, layer: int | None = None, metric: str | None = None) -> pd.DataFrame:
        """Rows of `heads`, optionally for one layer and/or metric."""
        return self._select("heads", {"layer": layer, "metric": metric}, "layer, head, metric")

    def head(self, layer: int, head: int, metric: str) -> HeadRecord:
        """Stats and examples of one metric of one head; QueryError if not in the index."""
        key = {"layer": layer, "head": head, "metric": metric}
        stats = self._select("heads", key, "head")
        if stats.empty:
            raise QueryError(f"no head layer={layer} head={head} metric={metric} in {self.root}")
        examples = self._select("head_examples", key, "bin, rank")
        return HeadRecord(stats.iloc[0].to_dict(), *_split(examples))

    def head_scores(self) -> pd.DataFrame:
        return self._select("head_scores", {}, "layer, head")

    def vocab(self) -> pd.DataFrame:
        return self._select("vocab", {}, "token_id")

    def contexts(self, ctx_ids: Sequence[int] | None = None, corpus: str | None = None) -> pd.DataFrame:
        """Rows of `contexts`, optionally only those with the given ids and/or corpus."""
        where, params = _where("contexts", {"corpus": corpus})
        if ctx_ids is not None:
            where.append("list_contains(?::BIGINT[], ctx_id)")
            params.append([int(i) for i in ctx_ids])
        return self._query("contexts", where, params, "corpus, ctx_id")

    def regex_check(self, layer: int, neuron: int, pattern: str, site: str | None = None,
                    threshold: float | None = None, time_limit_s: float = 10.0) -> dict[str, Any]:
        """How well "``pattern`` matches a span ending at this token" predicts "the neuron is
        active (> threshold) here", over the neuron's stored example windows (top and quantile
        examples, each token once). Needs no model, so the viewer can answer at once; the model-
        backed check over a corpus sample is ``neuroscope regex`` (indexer.analyses.regex).

        ``threshold`` defaults to half the neuron's max. A match may look back only as far as
        its window's start. Patterns run on RE2, or on Python's ``re`` under a time limit
        (``indexer.safe_regex``); a bad or runaway pattern raises ``RegexError``.
        """
        import numpy as np

        from indexer.pattern_score import scores
        from indexer.safe_regex import compile_pattern

        safe = compile_pattern(pattern, time_limit_s)
        sites = self.sql("SELECT DISTINCT site FROM neurons WHERE layer = ?", [layer])["site"].tolist()
        site = site or ("mlp_post" if "mlp_post" in sites else (sites[0] if sites else None))
        if site not in sites:
            raise QueryError(f"layer {layer} has no neuron site {site!r} (sites: {', '.join(sites) or 'none'})")
        stats = self.sql("SELECT max FROM neurons WHERE site = ? AND layer = ? AND neuron = ?", [site, layer, neuron])
        if stats.empty:
            raise QueryError(f"no neuron {neuron} in {site} of layer {layer}")
        if threshold is None:
            threshold = 0.5 * max(float(stats["max"].iloc[0]), 0.0)
        rows = self.sql(
            "SELECT ctx_id, window_start, window_token_ids, window_acts FROM examples "
            "WHERE site = ? AND layer = ? AND neuron = ?", [site, layer, neuron])
        vocab = self._vocab_strings()
        tokens: dict[tuple[int, int], tuple[str, float]] = {}
        windows = []
        for ctx, start, ids, acts in rows.itertuples(index=False):
            strings = [vocab[i] if 0 <= i < len(vocab) else "" for i in ids]
            windows.append((int(ctx), int(start), strings, list(acts)))
        masks = safe.token_masks([w[2] for w in windows])
        matched: dict[tuple[int, int], bool] = {}
        for (ctx, start, strings, acts), mask in zip(windows, masks):
            for i, (tok, act) in enumerate(zip(strings, acts)):
                key = (ctx, start + i)
                if start + i == 0:
                    continue  # BOS is never recorded
                tokens[key] = (tok, float(act))
                matched[key] = matched.get(key, False) or bool(mask[i])
        keys = sorted(tokens)
        m = np.array([matched[k] for k in keys], bool)
        a = np.array([tokens[k][1] for k in keys], float)
        active = a > threshold
        found = {k: float(v) for k, v in scores(int((m & active).sum()), int(m.sum()), int(active.sum()), len(a)).items()}
        corr = float(np.corrcoef(m, a)[0, 1]) if len(a) > 1 and m.std() > 0 and a.std() > 0 else 0.0

        def few(selector: np.ndarray, order: np.ndarray) -> list[dict[str, Any]]:
            return [{"ctx_id": keys[i][0], "pos": keys[i][1], "token": tokens[keys[i]][0],
                     "activation": round(tokens[keys[i]][1], 4)} for i in order[selector[order]][:5]]

        return {
            "site": site, "layer": layer, "neuron": neuron, "pattern": pattern, "engine": safe.engine,
            "note": safe.engine_note, "scope": "the neuron's stored example windows", "threshold": threshold,
            "tokens": int(len(a)), "matched": int(m.sum()), "active": int(active.sum()),
            **{k: round(v, 4) for k, v in found.items()}, "correlation": round(corr, 4),
            "false_positives": few(m & ~active, np.argsort(a, kind="stable")),
            "false_negatives": few(active & ~m, np.argsort(-a, kind="stable")),
        }

    def _vocab_strings(self) -> list[str]:
        if not hasattr(self, "_vocab_cache"):
            v = self.sql("SELECT token_id, token_str FROM vocab ORDER BY token_id")
            self._vocab_cache = v["token_str"].tolist()
        return self._vocab_cache

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _select(self, view: str, filters: dict[str, Any], order: str) -> pd.DataFrame:
        where, params = _where(view, filters)
        return self._query(view, where, params, order)

    def _query(self, view: str, where: list[str], params: list, order: str) -> pd.DataFrame:
        sql = f"SELECT * FROM {view}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self.sql(f"{sql} ORDER BY {order}", params)


def _where(view: str, filters: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """``"col" = ?`` clauses for the filters that are not None (column names checked)."""
    columns = BY_NAME[view].columns()
    where, params = [], []
    for col, value in filters.items():
        if value is None:
            continue
        assert col in columns, f"{view} has no column {col}"  # a bug here, never user input
        where.append(f'"{col}" = ?')
        params.append(value.item() if hasattr(value, "item") else value)
    return where, params


def _split(examples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    top = examples[examples["kind"] == "top"].sort_values("rank").reset_index(drop=True)
    quantiles = examples[examples["kind"] == "quantile"].sort_values(["bin", "rank"]).reset_index(drop=True)
    return top, quantiles
