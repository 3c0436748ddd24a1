"""Safe SQL, one code path for the CLI, the Python API and the viewer: read-only statements
(PIVOT included), no files outside the index (symlinks and glob characters in folder names
included), bounded memory and threads, a default time limit that holds even for a query
that ignores its interrupt, checked limits, and JSON for every result type."""

from __future__ import annotations

import json
import os
import shutil

import duckdb
import pytest

from indexer.api import Index
from indexer.errors import IndexDirError, QueryError, QueryTimeout
from indexer.store import query
from indexer.store.manifest import MANIFEST
from indexer.store.query import DEFAULT_TIMEOUT_S, check_read_only, open_index, run_sql
from indexer.store.results import format_result

from helpers.fixtures_index import build_index

SLOW = "SELECT sum(a.range * b.range) FROM range(100000000) a, range(100000000) b"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return build_index(tmp_path_factory.mktemp("index") / "idx")


@pytest.mark.parametrize("sql", [
    "ATTACH 'x.db' AS x", "DETACH x", "INSTALL httpfs", "LOAD httpfs", "SET threads = 64", "RESET memory_limit",
    "SET memory_limit = '100GB'", "COPY (SELECT 1) TO 'out.csv'", "EXPORT DATABASE 'dump'", "CREATE TABLE t (a INT)",
    "CALL pragma_version()", "PRAGMA enable_profiling", "USE memory", "CHECKPOINT", "SELECT 1; SELECT 2",
])
def test_writes_settings_and_escapes_are_refused(index_dir, sql):
    with pytest.raises(QueryError):
        run_sql(index_dir, sql)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_parquet('/tmp/*.parquet')", "SELECT * FROM 'x.csv'", "SELECT * FROM glob('/*')",
])
def test_no_files_outside_the_index(index_dir, sql):
    with pytest.raises(QueryError):
        run_sql(index_dir, sql)


def test_pivot_is_read_only_and_allowed(index_dir):
    assert check_read_only("PIVOT neurons ON layer USING count(*)")
    df, _ = run_sql(index_dir, "PIVOT (SELECT layer FROM neurons) ON layer USING count(*)")
    assert sorted(df.columns) == ["0", "1"] and df.iloc[0].tolist() == [6, 6]


def test_memory_and_threads_are_bounded_and_a_huge_join_fails_cleanly(index_dir, monkeypatch):
    conn = open_index(index_dir)
    assert run_sql(conn, "SELECT current_setting('memory_limit') AS m")[0]["m"][0].startswith(("1.8", "1.9", "2.0"))
    assert 1 <= run_sql(conn, "SELECT current_setting('threads') AS t")[0]["t"][0] <= query.MAX_THREADS
    conn.close()
    monkeypatch.setenv("NEUROSCOPE_SQL_MEMORY_LIMIT", "64MB")
    with pytest.raises(QueryError, match="NEUROSCOPE_SQL_MEMORY_LIMIT"):
        run_sql(index_dir, "SELECT list(a.range || 'x' || b.range) FROM range(3000) a, range(3000) b", timeout_s=60)
    monkeypatch.setenv("NEUROSCOPE_SQL_MEMORY_LIMIT", "lots")
    with pytest.raises(QueryError, match="expected a size"):
        open_index(index_dir)


def test_a_symlink_out_of_the_index_is_refused(index_dir, tmp_path):
    root = tmp_path / "idx"
    shutil.copytree(index_dir, root)
    outside = tmp_path / "secret.parquet"
    shutil.copy(root / "vocab.parquet", outside)
    (root / "vocab.parquet").unlink()
    os.symlink(outside, root / "vocab.parquet")
    with pytest.raises(IndexDirError, match="points outside the index"):
        open_index(root)


def test_glob_characters_in_the_folder_name_do_not_reach_siblings(index_dir, tmp_path):
    shutil.copytree(index_dir, tmp_path / "ix*")
    shutil.copytree(index_dir, tmp_path / "ix-sibling")
    (tmp_path / "ix-sibling" / "vocab.parquet").unlink()
    shutil.copy(index_dir / "vocab.parquet", tmp_path / "ix-sibling" / "vocab.parquet")
    rows = run_sql(tmp_path / "ix*", "SELECT count(*) AS n FROM vocab")[0]["n"][0]
    assert rows == run_sql(index_dir, "SELECT count(*) AS n FROM vocab")[0]["n"][0]  # not twice as many
    for name in ("i?x[1]{a,b}", "a]b"):
        shutil.copytree(index_dir, tmp_path / name)
        assert run_sql(tmp_path / name, "SELECT count(*) AS n FROM vocab")[0]["n"][0] == rows


@pytest.mark.parametrize("limit, timeout", [(-1, 5), (1.5, 5), (10, float("nan")), (10, float("inf")), (10, 0), (10, -3)])
def test_bad_limits_are_refused(index_dir, limit, timeout):
    with pytest.raises(QueryError, match="expected"):
        run_sql(index_dir, "SELECT 1", limit=limit, timeout_s=timeout)


def test_the_python_api_has_the_same_default_time_limit(index_dir):
    import inspect

    assert inspect.signature(Index.sql).parameters["timeout_s"].default == DEFAULT_TIMEOUT_S
    assert inspect.signature(run_sql).parameters["timeout_s"].default == DEFAULT_TIMEOUT_S
    with Index.open(index_dir) as ix:
        with pytest.raises(QueryTimeout, match="raise timeout_s"):
            ix.sql(SLOW, timeout_s=0.3)
        with pytest.raises(QueryError):
            ix.sql("COPY (SELECT 1) TO 'x.csv'")


def test_a_query_that_ignores_its_interrupt_still_ends_in_a_clear_message(index_dir, monkeypatch):
    import threading

    release = threading.Event()

    def stuck(cursor, sql, params, limit):  # a query DuckDB cannot interrupt
        release.wait(20)
        raise duckdb.InterruptException("INTERRUPT Error: Interrupted!")

    monkeypatch.setattr(query, "_fetch", stuck)
    try:
        with pytest.raises(QueryTimeout, match=r"ran past 0.2 s.*raise --timeout"):
            run_sql(index_dir, "SELECT 1", timeout_s=0.2)
    finally:
        release.set()


def test_the_row_cap_is_reported(index_dir):
    df, truncated = run_sql(index_dir, "SELECT * FROM range(100)", limit=7)
    assert len(df) == 7 and truncated
    assert run_sql(index_dir, "SELECT * FROM range(7)", limit=7)[1] is False


UNUSUAL = """SELECT 1.5::DECIMAL(10,2) d, DATE '2020-01-02' dt, TIMESTAMP '2020-01-02 03:04:05' ts, TIME '01:02:03' t,
 INTERVAL 14 MONTH i, 'ab'::BLOB b, {'a': 1, 'b': [1,2]} s, MAP {'k': 1} m, [1.5, NULL] l, uuid() u, 'nan'::DOUBLE n,
 'inf'::DOUBLE inf, 12345678901234567890::HUGEINT h, TIMESTAMPTZ '2020-01-01 00:00:00+00' tz, [[1],[2]] ll,
 'x'::ENUM('x','y') e, union_value(num := 2) un, '101'::BIT bit, DATE 'infinity' di, [1,2]::INT[2] arr"""


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_every_result_type_formats(index_dir, fmt):
    df, _ = run_sql(index_dir, UNUSUAL)
    text = format_result(df, fmt)
    if fmt == "json":
        row = json.loads(text)[0]
        assert row["d"] == 1.5 and row["dt"] == "2020-01-02" and row["b"] == "YWI=" and row["s"] == {"a": 1, "b": [1, 2]}
        assert row["n"] is None and row["inf"] is None and row["h"] == 12345678901234567890 and row["un"] == 2
        assert row["i"] == {"months": 14, "days": 0, "nanoseconds": 0} and row["arr"] == [1, 2]
    assert text.strip()


def test_an_index_of_another_format_version_is_refused(index_dir, tmp_path):
    root = tmp_path / "future"
    shutil.copytree(index_dir, root)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest.update(format_version=99, versions={"neuroscope": "9.0"})
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IndexDirError, match=r"format version 99 \(neuroscope 9.0\).*reads format version 1"):
        open_index(root)


def test_user_globs_from_a_glob_named_index_do_not_reach_siblings(index_dir, tmp_path):
    shutil.copytree(index_dir, tmp_path / "ix*")
    shutil.copytree(index_dir, tmp_path / "ix-sibling")
    for pattern in ("ix*/vocab.parquet", "ix[*]/../ix-sibling/vocab.parquet", "ix-sibling/vocab.parquet"):
        path = str(tmp_path / pattern)
        try:
            df, _ = run_sql(tmp_path / "ix*", f"SELECT filename FROM read_parquet('{path}', filename = true)")
        except QueryError:
            continue
        assert all("ix-sibling" not in f for f in df["filename"]), df
