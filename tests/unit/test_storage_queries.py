"""Index storage and the query layer on a small synthetic index (no model, no torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.store import schema
from indexer.api import Index
from indexer.store.canned import PARAMETERS, CANNED
from indexer.errors import IndexDirError, QueryError, QueryTimeout
from indexer.store.query import check_read_only, open_index, run_sql
from indexer.store.results import format_result
from indexer.store.manifest import read_manifest
from indexer.store.writer import IndexWriter, atomic_write_bytes

from helpers.fixtures_index import D_MLP, DEAD, LAYERS, N_HEADS, PER_BIN, BINS, TOP_K, build_index, write_analyses

# The contract's minimum columns (DESIGN.md, "Index layout and SQL views").
CONTRACT = {
    "latent_logit_effects": "site layer neuron direction rank token_id token_str value",  # beyond DESIGN.md (issue 20)
    "latent_neurons": "sae_site latent site layer neuron role weight",
    "neurons": "site layer neuron n_tokens mean std min max frac_active",
    "examples": "site layer neuron kind bin rank activation corpus ctx_id pos token_id token_str "
    "prev_token_str context_text window_start window_token_ids window_acts",
    "heads": "layer head metric n_tokens mean std min max frac_active",  # "the same for head metrics"
    "contexts": "ctx_id corpus doc_id token_ids",
    "vocab": "token_id token_str",
    "head_examples": "layer head metric kind bin rank activation value window_acts corpus ctx_id pos",
    "head_scores": "layer head prev_token induction duplicate_token bos",
    "head_wiki": "layer head prev_token induction duplicate_token bos self_attention mean_attn_distance successor",
    "head_composition": "layer_a head_a layer_b head_b kind score",
    "head_attention": "layer head metric kind bin rank ctx_id pos src_pos weights",
    "flags": "site layer neuron flag score detail",
    "regex_scores": "site layer neuron pattern_name pattern precision recall f1",
    "trigram_scores": "site layer neuron score prev_token_str token_str",
    "minimal_examples": "site layer neuron rank start length kept_fraction",
    "logit_effects": "layer neuron direction rank token_id token_str value",
    "site_agreement": "layer neuron site_a site_b top_k_overlap",
    "minimal_summary": "site layer neuron n_examples frac_within_8 median_length",
    "logit_agreement": "layer neuron site score top10_hit_rate",
    "expert_usage": "layer expert n_tokens n_tokens_read share",  # beyond DESIGN.md (issue 19)
    # beyond DESIGN.md (issue 24): token saliency, random directions, replays
    "token_saliency": "site layer neuron rank ctx_id pos token_pos token_str activation_drop rel_drop salience_rank",
    "random_directions": "site layer neuron of_site direction",
    "replay_features": "site layer neuron checkpoint step rank_correlation top_ratio new_max changed",
    "replay_examples": "site layer neuron checkpoint kind bin rank ctx_id pos activation new_activation window_acts",
}
SLOW = "SELECT sum(a.range * b.range) FROM range(100000000) a, range(100000000) b"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return build_index(tmp_path_factory.mktemp("index") / "idx")


@pytest.fixture(scope="module")
def conn(index_dir):
    connection = open_index(index_dir)
    yield connection
    connection.close()


def _types(conn, view: str) -> dict[str, str]:
    return dict(conn.sql(f"SELECT column_name, column_type FROM (DESCRIBE {view})").fetchall())


# --- views and schema ---------------------------------------------------------------------


@pytest.mark.parametrize("table", schema.TABLES, ids=lambda t: t.NAME)
def test_every_view_has_its_schema_columns_and_types(conn, table):
    aliases = {alias: table.duckdb_types()[stored] for alias, stored in table.ALIASES.items()}
    assert _types(conn, table.NAME) == {**table.duckdb_types(), **aliases}
    assert set(CONTRACT[table.NAME].split()) <= set(table.columns()) | set(table.ALIASES)


def test_contract_covers_every_table():
    assert set(CONTRACT) == set(schema.BY_NAME)


def test_partition_columns_keep_their_types(conn, index_dir):
    types = _types(conn, "neurons")
    assert (types["site"], types["layer"]) == ("VARCHAR", "INTEGER")
    assert _types(conn, "heads")["layer"] == "INTEGER"
    assert conn.sql("SELECT DISTINCT corpus FROM contexts ORDER BY 1").fetchall() == [("code",), ("web",)]
    assert conn.sql("SELECT count(*) FROM neurons WHERE layer = 1").fetchall() == [(D_MLP,)]
    # One file read alone (pandas, no hive path parsing) still has its partition columns.
    one = pd.read_parquet(schema.Neurons.path(index_dir, {"site": "mlp_post", "layer": 1}))
    assert one["layer"].dtype == np.int32 and set(one["site"]) == {"mlp_post"}


def test_empty_view_for_missing_analysis(conn):
    assert conn.sql("SELECT count(*) FROM flags").fetchall() == [(0,)]


# --- writer -------------------------------------------------------------------------------


def test_writer_names_missing_and_unexpected_columns(tmp_path):
    with pytest.raises(ValueError, match=r"missing columns \['token_str'\].*unexpected columns \['tok'\]"):
        IndexWriter(tmp_path).write(schema.Vocab, {"token_id": [1], "tok": ["a"]})


def test_writer_refuses_lossy_casts_and_wrong_partitions(tmp_path):
    writer = IndexWriter(tmp_path)
    with pytest.raises(ValueError, match=r"vocab.token_id: cannot store as int32"):
        writer.write(schema.Vocab, {"token_id": [2**40], "token_str": ["a"]})
    rows = {"ctx_id": [1], "doc_id": [1], "token_ids": [[1, 2]], "n_tokens": [2]}
    with pytest.raises(ValueError, match=r"partition keys \[\] but expected \['corpus'\]"):
        writer.write(schema.Contexts, rows)
    with pytest.raises(ValueError, match=r"partition says corpus='web'"):
        writer.write(schema.Contexts, {**rows, "corpus": ["code"]}, partition={"corpus": "web"})
    with pytest.raises(ValueError, match=r"expected letters"):
        writer.write(schema.Contexts, rows, partition={"corpus": "../x"})


def test_writes_are_atomic_and_leave_no_temp_files(index_dir, tmp_path):
    assert not [p for p in index_dir.rglob("*") if ".tmp-" in p.name]
    atomic_write_bytes(tmp_path / "ckpt.bin", b"abc")
    with pytest.raises(ValueError):  # a failed write leaves neither the file nor a temp file
        IndexWriter(tmp_path).write(schema.Vocab, {"token_id": ["x"], "token_str": ["a"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.bin"]
    assert (tmp_path / "ckpt.bin").read_bytes() == b"abc"


def test_row_groups_are_bounded(tmp_path):
    n = schema.Examples.ROW_GROUP_ROWS + 1
    IndexWriter(tmp_path).write(schema.Vocab, {"token_id": np.arange(n), "token_str": ["a"] * n})
    meta = pq.ParquetFile(tmp_path / "vocab.parquet").metadata
    assert meta.num_rows == n and meta.row_group(0).column(0).compression == "ZSTD"


def test_free_text_is_written_without_a_dictionary(index_dir):
    """context_text seldom repeats: no dictionary page for it; the key columns keep theirs."""
    path = schema.Examples.files(index_dir)[0]
    group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)}
    assert schema.Examples.PLAIN_COLUMNS == ("context_text",)
    assert not any("DICTIONARY" in e for e in encodings["context_text"])
    assert any("DICTIONARY" in e for e in encodings["token_str"])


def test_manifest_round_trip_and_status(tmp_path):
    writer = IndexWriter(tmp_path)
    with pytest.raises(ValueError, match="status"):
        writer.write_manifest({"model": "x"})
    writer.write_manifest({"status": "partial", "tokens": np.int64(5)})
    assert read_manifest(tmp_path) == {"status": "partial", "tokens": 5}


def test_files_that_do_not_match_the_schema_are_refused(tmp_path):
    root = build_index(tmp_path / "idx")
    pq.write_table(pa.table({"token_id": [1]}), root / "vocab.parquet")
    with pytest.raises(IndexDirError, match="token_str"):
        open_index(root)


def test_missing_manifest_is_refused(tmp_path):
    with pytest.raises(IndexDirError, match="manifest.json"):
        open_index(tmp_path)
    with pytest.raises(IndexDirError, match="no such directory"):
        Index.open(tmp_path / "nope")


# --- Python API ---------------------------------------------------------------------------


def test_neuron_record(index_dir):
    with Index.open(index_dir) as idx:
        assert idx.manifest["status"] == "complete"
        record = idx.neuron(1, 2)
        assert record.stats["max"] == pytest.approx(2.2) and record.stats["neuron"] == 2
        assert record.top["rank"].tolist() == list(range(TOP_K))
        assert record.top["activation"].tolist() == pytest.approx([2.2, 2.1, 2.0])
        assert len(record.quantiles) == BINS * PER_BIN
        slots = [[b, r] for b in range(BINS) for r in range(PER_BIN)]
        assert record.quantiles[["bin", "rank"]].values.tolist() == slots
        assert set(record.top["layer"]) == {1} and set(record.top["neuron"]) == {2}
        with pytest.raises(QueryError, match="no neuron"):
            idx.neuron(1, 99)


def test_api_tables(index_dir):
    with Index.open(index_dir) as idx:
        assert len(idx.neurons(layer=0)) == D_MLP and len(idx.neurons()) == D_MLP * len(LAYERS)
        assert idx.contexts(ctx_ids=[1, 7])["ctx_id"].tolist() == [7, 1]  # ordered by corpus
        assert len(idx.vocab()) == 50
        head = idx.head(0, 1, "entropy")
        assert head.stats["metric"] == "entropy" and head.top["rank"].tolist() == list(range(TOP_K))
        assert idx.examples(layer=0, neuron=1)["kind"].iloc[0] == "top"
        # A value that would be an injection if interpolated is just a value that matches nothing.
        assert idx.examples(site="x' OR '1'='1").empty


# --- user SQL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "CREATE TABLE t AS SELECT 1",
        "COPY (SELECT 1) TO 'out.csv'",
        "ATTACH 'other.db'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET threads = 1",
        "PRAGMA threads = 1",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO 'out.csv'",
        "EXPORT DATABASE 'dump'",
        "CHECKPOINT",
        "WITH x AS (DELETE FROM neurons RETURNING *) SELECT * FROM x",  # parses as a SELECT
        "SELECT 1; SELECT 2",
        "",
    ],
)
def test_refuses_anything_but_one_read_only_statement(conn, query):
    with pytest.raises(QueryError):
        run_sql(conn, query)


@pytest.mark.parametrize("query", ["WITH a AS (SELECT 1) SELECT * FROM a", "VALUES (1)", "DESCRIBE neurons",
                                   "SHOW TABLES", "EXPLAIN SELECT 1", "PRAGMA table_info('neurons')"])
def test_accepts_read_only_statements(conn, query):
    check_read_only(query)
    assert not run_sql(conn, query)[0].empty


def test_copy_into_the_index_is_refused(conn, index_dir):
    target = index_dir / "leak.csv"
    with pytest.raises(QueryError):
        run_sql(conn, f"COPY neurons TO '{target}'")
    assert not target.exists()


def test_cannot_read_outside_the_index(conn, index_dir, tmp_path):
    other = tmp_path / "other"
    IndexWriter(other).write(schema.Vocab, {"token_id": [1], "token_str": ["secret"]})
    for query in [
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_parquet('{other}/*.parquet')",
        f"SELECT * FROM read_parquet('{index_dir}/../other/vocab.parquet')",
        "SELECT * FROM glob('/*')",
    ]:
        with pytest.raises(QueryError, match="Permission"):
            run_sql(conn, query)
    assert len(run_sql(conn, "SELECT * FROM neurons")[0]) == D_MLP * len(LAYERS)  # the views still work


def test_settings_cannot_be_unlocked(conn):
    with pytest.raises(QueryError):
        run_sql(conn, "SELECT * FROM query('SET enable_external_access = true')")
    with pytest.raises(duckdb.Error, match="locked"):
        conn.cursor().execute("SET enable_external_access = true")  # even trusted code cannot


def test_unlocked_connection_is_refused():
    with pytest.raises(QueryError, match="open_index"):
        run_sql(duckdb.connect(), "SELECT 1")


def test_python_variables_are_not_scanned(conn):
    secret = pd.DataFrame({"a": [1]})  # noqa: F841 -- DuckDB would find it by name otherwise
    with pytest.raises(QueryError, match="secret"):
        run_sql(conn, "SELECT * FROM secret")


def test_timeout_interrupts(conn):
    with pytest.raises(QueryTimeout, match=r"ran past 0.3 s .*raise --timeout"):
        run_sql(conn, SLOW, timeout_s=0.3)
    assert run_sql(conn, "SELECT 42 AS x")[0]["x"].tolist() == [42]  # the connection still works


def test_row_cap(conn):
    df, truncated = run_sql(conn, "SELECT * FROM range(1000000000)", limit=5)
    assert len(df) == 5 and truncated
    df, truncated = run_sql(conn, "SELECT * FROM range(5)", limit=5)
    assert len(df) == 5 and not truncated


def test_errors_are_one_line(conn):
    with pytest.raises(QueryError) as info:
        run_sql(conn, "SELECT * FROM no_such_table")
    assert "\n" not in str(info.value) and "no_such_table" in str(info.value)


def test_params_are_bound(conn):
    df, _ = run_sql(conn, "SELECT neuron FROM neurons WHERE layer = ? AND neuron < ? ORDER BY 1", [1, 2])
    assert df["neuron"].tolist() == [0, 1]


# --- canned queries -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CANNED))
def test_canned_queries_run_without_analyses(conn, name):
    df, _ = run_sql(conn, f"{name} t1" if name in PARAMETERS else name)
    assert {"layer", "score"} <= set(df.columns) and ({"neuron", "head"} & set(df.columns))


def test_canned_results(conn):
    dead, _ = run_sql(conn, "dead-neurons")
    assert dead[["layer", "neuron"]].values.tolist() == [list(DEAD)]
    top, _ = run_sql(conn, "top-neurons")
    assert top["score"].is_monotonic_decreasing and top["layer"].iloc[0] == LAYERS[-1]
    assert run_sql(conn, "trigram-neurons")[0].empty
    # token-neurons binds its argument: t1-only top examples would score 1; a quote is just text.
    tokens, _ = run_sql(conn, "token-neurons t1")
    assert tokens["score"].is_monotonic_decreasing and (tokens["score"] > 0).all()
    assert run_sql(conn, "top-neurons-for-token x'; SELECT 1 --")[0].empty
    pairs, _ = run_sql(conn, "composing-heads")
    assert pairs["score"].is_monotonic_decreasing and len(pairs) == 3 * N_HEADS * N_HEADS
    assert pairs[["layer_a", "head_a", "layer_b", "head_b", "kind"]].iloc[0].tolist() == [0, 1, 1, 0, "k"]
    wiki, _ = run_sql(conn, "head-wiki")
    assert wiki["score"].is_monotonic_decreasing and len(wiki) == len(LAYERS) * N_HEADS


def test_trigram_neurons_best_first(tmp_path):
    root = build_index(tmp_path / "idx", analyses=True)
    df, _ = run_sql(root, "trigram-neurons")
    assert df[["layer", "neuron"]].values.tolist() == [[0, 1], [1, 2], [0, 4]]
    assert df["score"].tolist() == [0.9, 0.7, 0.2] and df["prev_token_str"].iloc[0] == "b"


def test_analyses_written_later_are_seen(tmp_path):
    root = build_index(tmp_path / "idx")
    assert run_sql(root, "trigram-neurons")[0].empty
    write_analyses(IndexWriter(root))
    assert len(run_sql(root, "trigram-neurons")[0]) == 3


# --- output formats -----------------------------------------------------------------------


def test_format_result(conn):
    df, _ = run_sql(conn, "SELECT layer, neuron, context_text, window_acts FROM examples ORDER BY ALL LIMIT 3")
    table = format_result(df, "table", max_width=20)
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "neuron", "context_text", "window_acts"]
    assert all(len(line) <= len("layer  neuron  ") + 20 + 2 + 20 for line in lines)  # cells cut to 20
    assert "…" in table and lines[-1] == "(3 rows)"
    records = json.loads(format_result(df, "json"))
    assert len(records) == 3 and isinstance(records[0]["window_acts"], list)
    assert records[0]["context_text"] == df["context_text"][0]  # full text, not cut
    csv = format_result(df, "csv").splitlines()
    assert csv[0] == "layer,neuron,context_text,window_acts" and len(csv) == 4
    with pytest.raises(ValueError):
        format_result(df, "xml")
    assert format_result(pd.DataFrame([[1, 2]], columns=["a", "a"])).splitlines()[2] == "1  2"


def test_query_layer_does_not_import_torch():
    code = "import sys, indexer.api, indexer.store.query; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
