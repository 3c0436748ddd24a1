"""Hostile corpus input, fed to the readers (no model): random bytes, huge lines, deeply
nested or wrong-typed JSON, NUL bytes, mixed encodings, BOMs, lone surrogates, empty files,
directories, FIFOs and corrupt or wrong-typed Parquet. The outcome is always documents (valid
UTF-8 text, no piece longer than MAX_DOC_CHARS) or one CorpusError; skipped counts are exact."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.errors import CorpusError
from indexer.inputs import corpus
from indexer.inputs.corpus import CorpusCounters, iter_documents, parse_corpus_spec

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read(path, skip=False):
    counters = CorpusCounters()
    docs = list(iter_documents(parse_corpus_spec(str(path)), counters, skip))
    for _, text in docs:
        assert isinstance(text, str) and 0 < len(text) <= corpus.MAX_DOC_CHARS
        text.encode("utf-8")  # no lone surrogates reach the tokenizer
    return docs, counters


def outcome(path, skip=False):
    try:
        return read(path, skip)
    except CorpusError as e:
        assert "\n" not in str(e) and str(e)
        return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["text", "t", "x"]), inner, max_size=3),
    max_leaves=12,
)


@SETTINGS
@given(data=st.binary(max_size=3000), suffix=st.sampled_from([".jsonl", ".json", ".txt", ".parquet"]))
def test_random_bytes_give_documents_or_one_error(tmp_path, data, suffix):
    path = tmp_path / f"c{suffix}"
    path.write_bytes(data)
    outcome(path)
    outcome(path, skip=True)


@SETTINGS
@given(records=st.lists(json_values, max_size=8), bom=st.booleans(), junk=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")), max_size=3))
def test_json_lines_of_any_shape_skip_exactly(tmp_path, records, bom, junk):
    lines = [json.dumps(r).encode() for r in records] + [b"\x00" + j + b"{" for j in junk]
    path = tmp_path / "c.jsonl"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines))
    got = outcome(path, skip=True)
    assert got is not None
    docs, counters = got
    good = [r for r in records if isinstance(r, dict) and isinstance(r.get("text"), str)]
    assert counters.bad_records == len(records) - len(good) + len(junk)
    assert counters.documents + counters.empty_documents == len(good)
    assert [t for _, t in docs] == [r["text"] for r in good if r["text"].strip()]


def test_bom_works_for_json_and_jsonl(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"text": "hello"}\n{"text": "there"}\n')
    (tmp_path / "b.json").write_bytes(b"\xef\xbb\xbf" + b'[{"text": "hello"}]')
    (tmp_path / "c.txt").write_bytes(b"\xef\xbb\xbfhello")
    assert [t for _, t in read(tmp_path / "a.jsonl")[0]] == ["hello", "there"]
    assert [t for _, t in read(tmp_path / "b.json")[0]] == ["hello"]
    assert [t for _, t in read(tmp_path / "c.txt")[0]] == ["hello"]


def test_deep_nesting_is_a_bad_record(tmp_path):
    deep = b"[" * 100_000 + b"]" * 100_000
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "ok"}\n' + deep + b"\n")
    with pytest.raises(CorpusError, match="nested too deeply"):
        read(tmp_path / "d.jsonl")
    docs, counters = read(tmp_path / "d.jsonl", skip=True)
    assert [t for _, t in docs] == ["ok"] and counters.bad_records == 1
    (tmp_path / "d.json").write_bytes(deep)
    docs, counters = read(tmp_path / "d.json", skip=True)
    assert docs == [] and counters.bad_records >= 1


def test_lone_surrogates_nul_and_mixed_encodings_are_repaired_and_counted(tmp_path):
    lines = [b'{"text": "a\\ud800b"}', b'{"text": "nul\\u0000 ok"}', '{"text": "caf\u00e9"}'.encode("latin-1")]
    (tmp_path / "s.jsonl").write_bytes(b"\n".join(lines))
    docs, counters = read(tmp_path / "s.jsonl")
    assert [t for _, t in docs] == ["a?b", "nul\x00 ok", "caf\ufffd"]
    assert counters.utf8_replaced == 2


def test_a_huge_line_is_handed_on_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "MAX_DOC_CHARS", 1000)
    (tmp_path / "h.jsonl").write_text(json.dumps({"text": "x" * 4500}) + "\n" + json.dumps({"text": "y"}))
    docs, counters = read(tmp_path / "h.jsonl")
    assert [(d, len(t)) for d, t in docs] == [(0, 1000)] * 4 + [(0, 500), (1, 1)]
    assert counters.documents == 2


def test_files_that_are_not_regular_files(tmp_path):
    os.mkfifo(tmp_path / "f.jsonl")
    with pytest.raises(CorpusError, match="not a regular file"):
        parse_corpus_spec(str(tmp_path / "f.jsonl"))
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(CorpusError, match="directory"):
        parse_corpus_spec(str(tmp_path / "d.jsonl"))
    (tmp_path / "e.jsonl").write_bytes(b"")
    assert read(tmp_path / "e.jsonl")[0] == []


def test_parquet_of_the_wrong_type_or_corrupt(tmp_path):
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "i.parquet")
    with pytest.raises(CorpusError, match="'text' column holds int64"):
        read(tmp_path / "i.parquet")
    pq.write_table(pa.table({"text": [b"caf\xe9", None, b"ok"]}), tmp_path / "b.parquet")
    docs, counters = read(tmp_path / "b.parquet")
    assert [t for _, t in docs] == ["caf\ufffd", "ok"] and counters.utf8_replaced == 1 and counters.empty_documents == 1
    pq.write_table(pa.table({"text": ["a" * 50] * 2000}), tmp_path / "c.parquet", compression="none")
    data = bytearray((tmp_path / "c.parquet").read_bytes())
    data[200:60000] = os.urandom(59800)  # pages destroyed, footer intact
    (tmp_path / "c.parquet").write_bytes(bytes(data))
    with pytest.raises(CorpusError):
        read(tmp_path / "c.parquet")
