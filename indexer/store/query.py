"""Querying an index with DuckDB: one view per table of indexer.store.schema, and safe user SQL.

User SQL (``run_sql``) is guarded three ways:
- DuckDB's own parser must find exactly one statement of a read-only type (``check_read_only``);
- the connection cannot reach files outside the index: after the views are made, external
  access is switched off except for the index folder (``allowed_directories``) and the
  configuration is locked, so no statement can switch it back on;
- it runs in a worker thread that is interrupted after ``timeout_s`` (default
  ``DEFAULT_TIMEOUT_S``, the same for the CLI, the Python API and the viewer), and at most
  ``limit`` rows are fetched (one more tells whether the result was truncated);
- DuckDB's memory (``memory_limit``, default ``DEFAULT_MEMORY_LIMIT``, or the environment
  variable ``NEUROSCOPE_SQL_MEMORY_LIMIT``) and threads are bounded, and nothing spills to
  disk, so a huge join fails with a message instead of taking the machine.

Every file a view reads must resolve (symlinks followed) inside the index folder, and file
paths are glob-escaped, so neither a symlink nor a folder named ``ix*`` reaches other files.
Results as text for the command line: ``indexer.store.results``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.store.canned import ARGUMENT_VALUES, CANNED, PARAMETERS
from indexer.errors import IndexDirError, QueryError, QueryTimeout, one_line
from indexer.store.schema import TABLES, Table
from indexer.store.manifest import read_manifest

T = TypeVar("T")
Params = list | tuple | dict | None
# Read-only PRAGMAs; the others change settings (and the configuration is locked anyway).
SAFE_PRAGMAS = frozenset({"table_info", "show", "show_tables", "show_tables_expanded", "version", "database_size"})
_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(ANALY[SZ]E\s+)?(\([^)]*\)\s*)?", re.IGNORECASE)
_PRAGMA_NAME = re.compile(r"^\s*PRAGMA\s+(\w+)", re.IGNORECASE)
_FETCH_BATCH = 8192
_PIVOT = re.compile(r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*PIVOT\b", re.IGNORECASE | re.DOTALL)
_GLOB_CHARS = re.compile(r"([*?\[\]{}])")
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MEMORY_LIMIT = "2GB"
MAX_THREADS = 4


def open_index(index_dir: Path | str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per table, locked to ``index_dir``."""
    manifest = read_manifest(index_dir)  # refuses a folder that is not a (finished or partial) index
    root = os.path.realpath(index_dir)  # allowed_directories compares resolved paths
    for table in TABLES:
        check_inside(root, table.files(root))
    conn = duckdb.connect(":memory:")
    try:
        for table in TABLES:
            conn.execute(view_sql(table, root))
        conn.execute(expert_view_sql(manifest.get("experts")))
        _lock_down(conn, root)
    except (duckdb.Error, OSError, pa.ArrowException) as e:  # pyarrow: a file footer that cannot be read
        conn.close()
        raise IndexDirError(f"{index_dir}: cannot read the index: {one_line(e)}") from e
    return conn


def expert_view_sql(experts: dict[str, int] | None) -> str:
    """View ``expert_neurons``: the neurons of an ``experts`` site (mixture-of-experts models)
    with their expert and their neuron within it (expert = n_experts: the shared expert)."""
    n, d = (int(experts["n_experts"]), int(experts["d_expert"])) if experts else (0, 1)
    expert = f"CAST(CASE WHEN neuron < {n * d} THEN neuron // {d} ELSE {n} END AS INTEGER)"
    within = f"CAST(CASE WHEN neuron < {n * d} THEN neuron % {d} ELSE neuron - {n * d} END AS INTEGER)"
    return (f"CREATE VIEW expert_neurons AS SELECT layer, {expert} AS expert, {within} AS expert_neuron, * "
            f"FROM neurons WHERE site = 'experts'")


def check_inside(root: str, files: list[Path]) -> None:
    """IndexDirError if a file resolves (through symlinks) to a place outside ``root``."""
    for path in files:
        real = os.path.realpath(path)
        if not real.startswith(root + os.sep):
            raise IndexDirError(f"{path} points outside the index ({real}); refusing to read it")


def memory_limit() -> str:
    """DuckDB's memory limit for user SQL: NEUROSCOPE_SQL_MEMORY_LIMIT, else DEFAULT_MEMORY_LIMIT."""
    value = os.environ.get("NEUROSCOPE_SQL_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT).strip()
    if not re.fullmatch(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", value, re.IGNORECASE):
        raise QueryError(f"NEUROSCOPE_SQL_MEMORY_LIMIT={value!r}: expected a size such as 2GB or 512MB")
    return value


def view_sql(table: type[Table], root: str) -> str:
    """CREATE VIEW over the table's files, or an empty view with the right columns if none."""
    types = table.duckdb_types()
    files = table.files(root)
    aliases = "".join(f", {_ident(stored)} AS {_ident(alias)}" for alias, stored in table.ALIASES.items())
    if not files:
        cols = ", ".join(f"CAST(NULL AS {t}) AS {_ident(c)}" for c, t in types.items())
        return f"CREATE VIEW {table.NAME} AS SELECT *{aliases} FROM (SELECT {cols} WHERE false)"
    # A list of files, each glob-escaped: DuckDB expands globs even in a list.
    paths = ", ".join(_literal(glob_escape(str(p))) for p in files)
    options = "hive_partitioning = false, union_by_name = true"
    if table.PARTITIONS:
        hive = ", ".join(f"{_ident(c)}: {types[c]}" for c in table.PARTITIONS)
        options = f"hive_partitioning = true, hive_types = {{{hive}}}, union_by_name = true"
    # An optional column this version added that no file has yet (an index written before it): NULL.
    stored = set(table.PARTITIONS).union(*(pq.read_schema(p).names for p in files))
    optional = {f.name for f in dataclasses.fields(table) if f.default is None}
    cols = ", ".join(f"CAST(NULL AS {t}) AS {_ident(c)}" if c not in stored and c in optional else _ident(c)
                     for c, t in types.items())
    return f"CREATE VIEW {table.NAME} AS SELECT {cols}{aliases} FROM read_parquet([{paths}], {options})"


def glob_escape(path: str) -> str:
    """``path`` with DuckDB's glob characters bracketed: ``ix*`` -> ``ix[*]`` matches only itself."""
    return _GLOB_CHARS.sub(r"[\1]", path)


def _lock_down(conn: duckdb.DuckDBPyConnection, root: str) -> None:
    for statement in (
        "SET temp_directory = ''",  # else DuckDB also allows ./.tmp (spill files) of the cwd
        f"SET memory_limit = {_literal(memory_limit())}",  # else most of the machine
        f"SET threads = {max(1, min(MAX_THREADS, os.cpu_count() or 1))}",
        # The folder as the views spell it (glob-escaped) and as DuckDB then opens it; every
        # file a glob expands to is checked again, so neither spelling reaches a sibling.
        f"SET allowed_directories = [{_literal(glob_escape(root) + os.sep)}, {_literal(root + os.sep)}]",
        "SET enable_external_access = false",
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET python_enable_replacements = false",  # no scanning of the caller's DataFrames
        "SET lock_configuration = true",  # last: from here on no SET can undo the above
    ):
        conn.execute(statement)


def check_read_only(query: str) -> str:
    """The one read-only statement in ``query``, or QueryError saying why it was refused."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise QueryError(one_line(e)) from e
    if len(statements) != 1:
        raise QueryError(f"expected exactly one SQL statement, got {len(statements)}")
    statement = statements[0]
    kind = statement.type
    if kind == duckdb.StatementType.SELECT:  # also WITH, VALUES, DESCRIBE, SHOW, SUMMARIZE
        return statement.query
    if kind == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs its statement, so what it explains must be read-only too.
        check_read_only(_EXPLAIN_PREFIX.sub("", statement.query, count=1))
        return statement.query
    if kind == duckdb.StatementType.MULTI and _PIVOT.match(statement.query):
        return statement.query  # PIVOT without an IN list: DuckDB first finds the values (read-only)
    if kind == duckdb.StatementType.PRAGMA:
        match = _PRAGMA_NAME.match(statement.query)
        if match and match.group(1).lower() in SAFE_PRAGMAS:
            return statement.query
    raise QueryError(
        f"only read-only queries are allowed (SELECT, WITH, VALUES, PIVOT, DESCRIBE, SHOW, EXPLAIN, "
        f"PRAGMA table_info), got {kind.name}"
    )


def resolve(query: str) -> str:
    """The SQL of a canned query name, or ``query`` itself."""
    return resolve_params(query)[0]


def resolve_params(query: str) -> tuple[str, dict | None]:
    """(SQL, parameters) of a canned query, ``NAME`` or ``NAME ARG`` for one that takes an
    argument (everything after the first space, kept as is: ``token-neurons  dog`` asks for
    ``' dog'``); any other text is returned as SQL with no parameters.

    >>> resolve_params("token-neurons  dog")[1]
    {'token': ' dog'}
    """
    name, _, arg = query.lstrip().partition(" ")
    if name in PARAMETERS and name in CANNED and (arg or query.strip() == name):
        if not arg:
            raise QueryError(f"the canned query {name} needs an argument: {name} {PARAMETERS[name].upper()}")
        return CANNED[name][1], {PARAMETERS[name]: arg}
    canned = CANNED.get(query.strip())
    return (canned[1], None) if canned else (query, None)


def run_sql(
    dir_or_conn: Path | str | duckdb.DuckDBPyConnection,
    query: str,
    params: Params = None,
    limit: int | None = 10_000,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    setting: str = "--timeout",
) -> tuple[pd.DataFrame, bool]:
    """Run one read-only query (or a canned query name); returns (rows, truncated).

    ``limit=None`` fetches every row; ``timeout_s=None`` waits as long as it takes;
    ``setting`` names the option a QueryTimeout tells the user to raise.
    """
    check_limits(limit, timeout_s)
    resolved, canned_params = resolve_params(query)
    sql = check_read_only(resolved)
    params = canned_params if params is None and canned_params is not None else params
    own = not isinstance(dir_or_conn, duckdb.DuckDBPyConnection)
    conn = open_index(dir_or_conn) if own else dir_or_conn
    try:
        if canned_params:
            _check_argument(conn, query, canned_params, timeout_s, setting)
        return _run(conn, sql, params, limit, timeout_s, setting)
    finally:
        if own:
            _close_quietly(conn)


def _check_argument(conn, query: str, params: dict, timeout_s: float | None, setting: str) -> None:
    """A canned query's argument that is not one of the values it can take (when the index
    lists them, as regex_scores lists its patterns): one QueryError naming them."""
    name = query.lstrip().partition(" ")[0]
    if name not in ARGUMENT_VALUES:
        return
    values = _run(conn, ARGUMENT_VALUES[name], None, None, timeout_s, setting)[0].iloc[:, 0].tolist()
    (arg,) = params.values()
    if values and arg not in values:
        raise QueryError(f"{name} {arg!r}: no such {PARAMETERS[name]} in this index; it has: {', '.join(map(str, values))}")


def check_limits(limit: int | None, timeout_s: float | None) -> None:
    """QueryError for a row cap below 0 or a time limit that is not a positive finite number."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise QueryError(f"row limit {limit!r}: expected a whole number >= 0")
    if timeout_s is not None:
        try:
            ok = math.isfinite(float(timeout_s)) and float(timeout_s) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise QueryError(f"time limit {timeout_s!r}: expected a number of seconds > 0")


def _close_quietly(handle) -> None:
    # A query that ignored its interrupt is still running: closing then raises; leave it.
    try:
        handle.close()
    except duckdb.Error:
        pass


def _run(conn, sql: str, params: Params, limit: int | None, timeout_s: float | None,
         setting: str = "--timeout") -> tuple[pd.DataFrame, bool]:
    cursor = conn.cursor()  # its own cursor: interruptible alone, and safe across threads
    try:
        if cursor.sql("SELECT current_setting('lock_configuration')").fetchall() != [(True,)]:
            raise QueryError("refusing to run user SQL on a connection not made by open_index")
        table = _with_timeout(lambda: _fetch(cursor, sql, params, limit), cursor, timeout_s, sql, setting)
    except duckdb.Error as e:
        raise QueryError(_sql_message(e)) from e
    except (pa.ArrowException, OSError) as e:  # DuckDB's error met while streaming the result (e.g. a
        raise QueryError(one_line(e)) from e  # refused file), surfaced by Arrow's reader: timing decides which
    finally:
        _close_quietly(cursor)
    truncated = limit is not None and table.num_rows > limit
    return to_pandas(table.slice(0, limit) if truncated else table), truncated


def _safe_py(scalar: pa.Scalar) -> Any:
    try:
        return scalar.as_py()
    except (pa.ArrowException, ValueError, OverflowError, TypeError):
        try:
            return str(scalar.cast(pa.string()).as_py())
        except (pa.ArrowException, ValueError, OverflowError, TypeError):
            return f"<{scalar.type} value out of Python's range>"


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """A DataFrame of any result: columns pandas has no type for (unions, out-of-range
    timestamps...) become Python objects, or their text if even that fails."""
    try:
        return table.to_pandas()
    except (pa.ArrowException, ValueError, OverflowError, TypeError):
        pass
    columns = {}
    for i, name in enumerate(table.column_names):
        column = table.column(i)
        try:
            columns[i] = column.to_pandas()
        except (pa.ArrowException, ValueError, OverflowError, TypeError):
            try:
                columns[i] = pd.Series(column.to_pylist(), dtype=object)
            except (pa.ArrowException, ValueError, OverflowError, TypeError):
                columns[i] = pd.Series([_safe_py(v) for v in column], dtype=object)
    df = pd.DataFrame(columns)
    df.columns = table.column_names
    return df


def _fetch(cursor, sql: str, params: Params, limit: int | None) -> pa.Table:
    # cursor.sql() streams a SELECT; cursor.execute() would materialise every row first.
    relation = cursor.sql(sql, params=params) if params is not None else cursor.sql(sql)
    if relation is None:
        return pa.table({})
    reader = relation.to_arrow_reader(_FETCH_BATCH if limit is None else min(limit + 1, _FETCH_BATCH))
    if limit is None:
        return reader.read_all()
    batches, rows = [], 0
    for batch in reader:
        batches.append(batch)
        rows += batch.num_rows
        if rows > limit:
            break
    return pa.Table.from_batches(batches, schema=reader.schema)


def _sql_message(e: duckdb.Error) -> str:
    text = one_line(e)
    if isinstance(e, duckdb.OutOfMemoryException) or "memory" in text.lower() and "limit" in text.lower():
        return (f"{text} (user SQL may use {memory_limit()}; narrow the query, or raise "
                "NEUROSCOPE_SQL_MEMORY_LIMIT)")
    return text


def _with_timeout(work: Callable[[], T], cursor, timeout_s: float | None, sql: str = "",
                  setting: str = "--timeout") -> T:
    if timeout_s is None:
        return work()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as e:  # handed to the caller's thread below
            box["error"] = e

    thread = threading.Thread(target=target, name="neuroscope-sql", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        cursor.interrupt()
        thread.join(5)  # an interrupted DuckDB query stops within milliseconds; if it ignores
        raise QueryTimeout(sql, timeout_s, setting)  # the interrupt, it is left to end on its own
    if "error" in box:
        raise box["error"]
    return box["value"]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
