"""The machinery of the on-disk tables (``indexer.store.schema`` lists the tables themselves):
the base class ``Table``, the Arrow and DuckDB types a field's annotation maps to, the shared
key and column groups tables are built from, and what a hive partition value may hold.

A field's annotation gives its type: ``int`` -> int64, ``float`` -> float64, ``str``, ``bool``,
``list[T]``; ``Int32`` / ``Float32`` say where the narrower Arrow type is wanted. A field with a
default (``= None``) is optional: the writer fills it with nulls when it is not given.
"""


from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar

import pyarrow as pa

Int32 = Annotated[int, pa.int32()]
Float32 = Annotated[float, pa.float32()]

_PLAIN = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}
# Hive path values must survive a round trip through a directory name unchanged (':' for the
# sites of SAEs, ``sae:NAME``; DuckDB reads it back as is).
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.+:-]+$")
_DUCKDB_TYPES = {
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
}


def arrow_type(annotation) -> pa.DataType:
    """The Arrow type of one field annotation (``Optional`` is unwrapped: Arrow is nullable)."""
    if typing.get_origin(annotation) is Annotated:
        return typing.get_args(annotation)[1]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return arrow_type(inner)
    if typing.get_origin(annotation) is list:
        return pa.list_(arrow_type(typing.get_args(annotation)[0]))
    return _PLAIN[annotation]


def duckdb_type(t: pa.DataType) -> str:
    """The DuckDB SQL spelling of an Arrow type used in these schemas."""
    if pa.types.is_list(t):
        return duckdb_type(t.value_type) + "[]"
    return _DUCKDB_TYPES[t]


def valid_partition_value(value: object) -> bool:
    """Whether ``value`` may appear in a hive path (``corpus=NAME``): letters, digits, ``_.+:-``."""
    return bool(_SAFE_VALUE.match(str(value)))


class Table:
    """Base of the table dataclasses. Subclasses set LOCATION (and PARTITIONS if any).

    Attributes:
      NAME: the DuckDB view name.
      LOCATION: path under the index dir: a ``.parquet`` file, or a folder of part files.
      PARTITIONS: hive partition columns, outermost first (folder tables only).
      ROW_GROUP_ROWS: Parquet row-group size; smaller where rows carry big list columns.
    """

    NAME: ClassVar[str]
    LOCATION: ClassVar[str]
    PARTITIONS: ClassVar[tuple[str, ...]] = ()
    # Narrow tables: 64k rows per group keeps the footer small and scans fast.
    ROW_GROUP_ROWS: ClassVar[int] = 65_536
    # Extra view columns: alias -> stored column (the view shows both names).
    ALIASES: ClassVar[dict[str, str]] = {}
    # Columns written without a dictionary: text that seldom repeats, whose dictionary Parquet
    # would build and then drop (a quarter of the time to write an examples file).
    PLAIN_COLUMNS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def single_file(cls) -> bool:
        return cls.LOCATION.endswith(".parquet")

    @classmethod
    def schema(cls) -> pa.Schema:
        return _schema(cls)

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def optional_columns(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    @classmethod
    def duckdb_types(cls) -> dict[str, str]:
        return {f.name: duckdb_type(f.type) for f in cls.schema()}

    @classmethod
    def path(cls, root: Path | str, partition: dict | None = None, part: str = "part-0") -> Path:
        """Where a part file of this table goes (the file itself for single-file tables)."""
        if cls.single_file():
            return Path(root) / cls.LOCATION
        folder = Path(root) / cls.LOCATION
        for col in cls.PARTITIONS:
            folder = folder / f"{col}={(partition or {})[col]}"
        return folder / f"{part}.parquet"

    @classmethod
    def files(cls, root: Path | str) -> list[Path]:
        """The table's finished files under ``root``, sorted (temporary files never match)."""
        root = Path(root)
        if cls.single_file():
            return [root / cls.LOCATION] if (root / cls.LOCATION).is_file() else []
        pattern = "/".join([f"{c}=*" for c in cls.PARTITIONS] + ["*.parquet"])
        return sorted(p for p in (root / cls.LOCATION).glob(pattern) if not p.name.startswith("."))


@functools.cache
def _schema(cls: type[Table]) -> pa.Schema:
    hints = typing.get_type_hints(cls, include_extras=True)
    # Every column is nullable, as DuckDB sees it anyway; optional ones are all-null if not given.
    return pa.schema([pa.field(f.name, arrow_type(hints[f.name])) for f in dataclasses.fields(cls)])


# Pieces shared by several tables. Fields come out in reverse MRO order, so a table lists its
# key mixin LAST among its bases to get its key columns first.
table = dataclass(frozen=True, kw_only=True)


@table
class NeuronKey(Table):
    site: str  # mlp_post, mlp_pre, mlp_mid
    layer: Int32
    neuron: Int32


@table
class HeadKey(Table):
    layer: Int32
    head: Int32
    metric: str  # see indexer.forward.sites.HEAD_METRICS


@table
class StatColumns:
    """Statistics of one feature over every indexed token."""

    n_tokens: int
    mean: float
    std: float
    min: float
    max: float
    frac_active: float  # fraction of tokens with a value > 0
    hist: list[int]  # token counts per histogram bin
    quantile_edges: list[Float32]  # value edges of the quantile bins that `bin` counts in
    bin_counts: list[int]  # tokens that fell in each quantile bin
    hist_edges: list[Float32] | None = None  # len(hist) + 1 edges of the histogram bins
    quantiles: list[Float32] | None = None  # the requested quantiles; quantile_edges are these over all tokens
    bin_shares: list[float] | None = None  # bin_counts / n_tokens
    bin_status: str | None = None  # 'ok'; 'near_constant' (some quantile bin is empty); 'dead' (all ~0)


@table
class SlotColumns:
    kind: str  # 'top' or 'quantile'
    bin: Int32  # quantile bin, -1 for top examples
    rank: Int32  # 0 = highest value within (kind, bin)


@table
class WhereColumns:
    """Where an example sits: the context, and the window of tokens shown around it."""

    PLAIN_COLUMNS: ClassVar[tuple[str, ...]] = ("context_text",)

    corpus: str
    ctx_id: int
    doc_id: int
    pos: Int32  # position in the context as the model saw it (BOS = 0)
    token_id: Int32
    token_str: str
    prev_token_str: str
    context_text: str
    window_start: Int32  # context position of window_token_ids[0]
    window_token_ids: list[Int32]
    activation: Float32  # the feature's value at `pos` (a neuron's activation, a head's metric)
    window_acts: list[Float32]  # the feature's value at each window token
