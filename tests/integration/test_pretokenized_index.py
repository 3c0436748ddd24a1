"""A pre-tokenized corpus (a Parquet `tokens` column) indexes to the same index as its text, and
the manifest says in what order and how many documents of each corpus were used."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.api import Index
from indexer.inputs.corpus import CorpusCounters, parse_corpus_spec, read_documents
from indexer.inputs.models import load_model
from indexer.run.engine import index

from helpers.configs import base_config

TABLES = {
    "examples": "SELECT * EXCLUDE (corpus) FROM examples ORDER BY site, layer, neuron, kind, bin, rank",
    "head_examples": "SELECT * EXCLUDE (corpus) FROM head_examples ORDER BY layer, head, metric, kind, bin, rank",
    "neurons": "SELECT * FROM neurons ORDER BY site, layer, neuron",
    "contexts": "SELECT * EXCLUDE (corpus) FROM contexts ORDER BY ctx_id",
}


def tokenized_copy(name: str, folder, used: set[int], tokenizer, bos_every: int) -> str:
    """The embedded corpus as a Parquet `tokens` column, one row per document (doc_id = row).
    Only the documents the text run used are tokenized (the whole corpus takes minutes); the
    others hold a placeholder, which would change the index if the stream ever read it.
    Every ``bos_every``-th row starts with BOS, as in datasets tokenized with BOS."""
    counters = CorpusCounters()
    texts = [text for _, text in read_documents(parse_corpus_spec(name), counters)]
    assert counters.empty_documents == 0  # so rows and documents line up one to one
    rows = []
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] if i in used else [7, 7, 7]
        rows.append(([0] if i % bos_every == 0 else []) + ids)
    path = folder / f"{name}.parquet"
    pq.write_table(pa.table({"tokens": pa.array(rows, pa.list_(pa.int32()))}), path, row_group_size=100)
    return f"{name}={path}"


@pytest.mark.parametrize("order", ["shuffle", "file"])
def test_token_rows_index_like_their_text(order, tmp_path):
    text = base_config("toy-1l", str(tmp_path / "text"), order=order, store_contexts="all", seed=4)
    index(text, progress=False)
    a = Index.open(text.out)
    used = a.sql("SELECT DISTINCT corpus, doc_id FROM contexts")
    tokenizer = load_model("toy-1l").tokenizer
    corpora = [tokenized_copy(name, tmp_path, set(used["doc_id"][used["corpus"] == name]), tokenizer, bos_every)
               for name, bos_every in (("code", 2), ("prose", 3))]
    tokens = base_config("toy-1l", str(tmp_path / "tokens"), order=order, store_contexts="all", seed=4, corpus=corpora)
    index(tokens, progress=False)
    b = Index.open(tokens.out)
    for name, sql in TABLES.items():
        left, right = a.sql(sql), b.sql(sql)
        assert len(left) > 0 and left.equals(right), name
    assert list(a.sql("SELECT corpus FROM contexts ORDER BY ctx_id")["corpus"]) == \
        list(b.sql("SELECT corpus FROM contexts ORDER BY ctx_id")["corpus"])
    for got, want in zip(b.manifest["corpora"], a.manifest["corpora"]):
        assert got["kind"] == "tokens" and want["kind"] == "text"
        for key in ("order", "documents_used", "documents_in_source", "tokens"):
            assert got[key] == want[key], key
    # the manifest counts exactly the documents the stream drew from
    used = a.sql("SELECT corpus, count(DISTINCT doc_id) AS n FROM contexts GROUP BY corpus")
    assert {c["name"]: c["documents_used"] for c in a.manifest["corpora"]} == dict(zip(used["corpus"], used["n"]))
    assert all(c["order"] == order for c in a.manifest["corpora"]) and a.manifest["config"]["order"] == order
    if order == "file":
        assert a.sql("SELECT max(doc_id) + 1 AS n FROM contexts WHERE corpus = 'code'")["n"][0] == \
            a.manifest["corpora"][0]["documents_used"]
