"""Reading an index for export: which sites and layers it holds, and its features one chunk
at a time.

Every read is one DuckDB query on the index's locked-down views (``indexer.store.query``),
restricted to one (site, layer) partition and a range of feature indices, so the Parquet
files' partitions and row-group statistics keep each read to the rows it needs: memory is
bounded by the chunk, not by the index.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from indexer.errors import ConfigError, IndexDirError, one_line
from indexer.export.records import Example, Feature, Site
from indexer.store import schema
from indexer.store.manifest import read_manifest
from indexer.store.query import open_index

CHUNK = 256  # features per read: a few MB of example windows
_STATS = ("n_tokens", "mean", "std", "min", "max", "frac_active", "hist", "hist_edges", "quantile_edges",
          "bin_counts", "bin_shares")
_EXAMPLE = ("kind", "bin", "rank", "activation", "ctx_id", "pos", "window_start", "window_token_ids", "window_acts")


class IndexSource:
    """One index opened for export (use as a context manager)."""

    def __init__(self, index_dir: Path | str):
        self.root = Path(index_dir)
        self.manifest = read_manifest(index_dir)
        self.conn = open_index(index_dir)
        self._vocab: list[str] | None = None

    def __enter__(self) -> "IndexSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def query(self, sql: str, params: list | None = None) -> pa.Table:
        """Our own read-only SQL on the index's views, as an Arrow table."""
        try:
            return self.conn.sql(sql, params=params).to_arrow_table()
        except (duckdb.Error, pa.ArrowException, OSError) as e:
            raise IndexDirError(f"{self.root}: cannot read the index: {one_line(e)}") from e

    def has(self, table: str) -> bool:
        """Whether the index holds any file of ``table`` (analyses are optional)."""
        return bool(schema.BY_NAME[table].files(self.root))

    def layers(self) -> dict[Site, list[int]]:
        """Every site the index holds (head metrics as ``heads/METRIC``), with its layers."""
        found: dict[Site, list[int]] = {}
        for sql in ("SELECT site AS s, layer FROM neurons GROUP BY ALL ORDER BY ALL",
                    "SELECT 'heads/' || metric AS s, layer FROM heads GROUP BY ALL ORDER BY ALL"):
            for name, layer in zip(*self.query(sql).to_pydict().values()):
                found.setdefault(Site(name), []).append(int(layer))
        return found

    def plan(self, sites: tuple[str, ...] | None, layers: tuple[int, ...] | None, takes: str,
             default: tuple[str, ...] | None = None) -> list[tuple[Site, int]]:
        """The (site, layer) pairs to export, in order; ConfigError naming what the index has
        when a site or layer is not there, or when nothing is left to export.

        ``takes``: 'neurons' (neuron and SAE sites), 'heads' (head metrics) or 'all';
        ``default``: the sites when none are asked for (None: every site it takes)."""
        held = self.layers()
        names = [s.name for s in held]
        if not held:
            raise IndexDirError(f"{self.root} holds no features (no neurons, latents or heads): nothing to export")
        wanted: list[Site] = []
        for name in sites or default or names:
            if name == "heads":
                matched = [s for s in held if s.head]
            else:
                matched = [s for s in held if s.name == name]
            if not matched and sites:
                raise ConfigError(f"--site {name}: no such site in {self.root}; it has: "
                                  f"{', '.join(_site_names(names))}")
            wanted += [s for s in matched if s not in wanted]
        fits = [s for s in wanted if takes == "all" or s.head == (takes == "heads")]
        if sites and len(fits) < len(wanted):
            bad = next(s for s in wanted if s not in fits)
            raise ConfigError(f"--site {bad.name}: this format takes "
                              f"{'head metrics' if takes == 'heads' else 'neuron and SAE sites, not heads'}")
        if not fits:
            kind = "heads site (index with --sites ...,heads)" if takes == "heads" else "neuron or SAE site"
            raise ConfigError(f"{self.root} has no {kind} to export; it has: {', '.join(_site_names(names))}")
        plan = [(s, layer) for s in fits for layer in held[s] if layers is None or layer in layers]
        missing = sorted(set(layers or ()) - {layer for s in fits for layer in held[s]})
        if missing or not plan:
            have = sorted({layer for s in fits for layer in held[s]})
            raise ConfigError(f"--layers: no layer {', '.join(map(str, missing))} in the sites exported "
                              f"(layers: {', '.join(map(str, have))})")
        return plan

    def indices(self, site: Site, layer: int, features: tuple[tuple[int, int], ...] | None) -> list[int]:
        """The feature indices of one (site, layer), ascending, within ``features``."""
        stats, _, key, col, value = site.tables
        where, params = _where(key, col, value, layer, features)
        return self.query(f"SELECT {key} FROM {stats} WHERE {where} ORDER BY {key}", params).column(0).to_pylist()

    def features(self, site: Site, layer: int, indices: list[int], logits: bool = False) -> Iterator[Feature]:
        """The features ``indices`` (ascending) of one (site, layer), read CHUNK at a time."""
        stats_view, examples_view, key, col, value = site.tables
        for i in range(0, len(indices), CHUNK):
            chunk = indices[i:i + CHUNK]
            where, params = _where(key, col, value, layer, ((chunk[0], chunk[-1]),))
            stats = self.query(f"SELECT {key} AS idx, {', '.join(_STATS)} FROM {stats_view} WHERE {where} "
                               f"ORDER BY idx", params).to_pylist()
            rows = self.query(f"SELECT {key} AS idx, {', '.join(_EXAMPLE)} FROM {examples_view} WHERE {where} "
                              "ORDER BY idx, kind DESC, bin, rank", params).to_pydict()  # 'top' first
            by_index = {k: list(g) for k, g in itertools.groupby(range(len(rows["idx"])), key=rows["idx"].__getitem__)}
            effects = self._logits(site, layer, chunk[0], chunk[-1]) if logits else {}
            wanted = set(chunk)
            for row in stats:
                idx = row.pop("idx")
                row["hist_edges"] = row["hist_edges"] or self.manifest.get("hist_edges")  # an older index
                if idx in wanted:
                    yield Feature(site, layer, idx, row, [_example(rows, j) for j in by_index.get(idx, [])],
                                  effects.get(idx) if logits else None)

    def each(self, work: list[tuple[Site, int, list[int]]], bar, logits: bool = False) -> Iterator[Feature]:
        """Every feature of ``work`` ((site, layer, indices) entries), ticking ``bar`` per feature."""
        for site, layer, indices in work:
            for feature in self.features(site, layer, indices, logits):
                yield feature
                bar.update()

    def vocab(self) -> list[str]:
        """Token strings by id, exactly as the index stores them."""
        if self._vocab is None:
            table = self.query("SELECT token_id, token_str FROM vocab ORDER BY token_id")
            ids, strings = table.column(0).to_pylist(), table.column(1).to_pylist()
            vocab = [""] * (max(ids) + 1 if ids else 0)
            for i, s in zip(ids, strings):
                vocab[i] = s
            self._vocab = vocab
        return self._vocab

    def _logits(self, site: Site, layer: int, first: int, last: int) -> dict[int, tuple[list, list]]:
        """Per feature: (boosted, suppressed) tokens from ``neuroscope analyze``'s logit effects:
        ``logit_effects`` for output neurons (mlp_post, experts), ``latent_logit_effects`` for
        SAE latents; empty where the analysis has not run."""
        if site.sae and self.has("latent_logit_effects"):
            table, extra, params = "latent_logit_effects", "AND site = ?", [site.name]
        elif site.name in ("mlp_post", "experts") and self.has("logit_effects"):
            table, extra, params = "logit_effects", "", []
        else:
            return {}
        rows = self.query(f"SELECT neuron, direction, token_str, value FROM {table} WHERE layer = ? {extra} "
                          "AND neuron BETWEEN ? AND ? ORDER BY neuron, direction DESC, rank",
                          [layer, *params, first, last]).to_pydict()  # 'up' before 'down'
        found: dict[int, tuple[list, list]] = {}
        for n, direction, token, v in zip(rows["neuron"], rows["direction"], rows["token_str"], rows["value"]):
            up, down = found.setdefault(n, ([], []))
            (up if direction == "up" else down).append((token, v))
        return found


def _example(rows: dict[str, list], j: int) -> Example:
    return Example(rows["kind"][j], rows["bin"][j], rows["rank"][j], rows["activation"][j], rows["ctx_id"][j],
                   rows["pos"][j], rows["window_start"][j], rows["window_token_ids"][j], rows["window_acts"][j])


def _where(key: str, col: str, value: str, layer: int,
           features: tuple[tuple[int, int], ...] | None) -> tuple[str, list[Any]]:
    where, params = f"{col} = ? AND layer = ?", [value, layer]
    if features:
        where += " AND (" + " OR ".join(f"{key} BETWEEN ? AND ?" for _ in features) + ")"
        params += [int(x) for pair in features for x in pair]
    return where, params


def _site_names(names: list[str]) -> list[str]:
    """Site names for a message: head metrics folded into 'heads' and its metrics."""
    heads = [n for n in names if n.startswith("heads/")]
    return [n for n in names if n not in heads] + ([f"heads ({', '.join(h[6:] for h in heads)})"] if heads else [])
