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
