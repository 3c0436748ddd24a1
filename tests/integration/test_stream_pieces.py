"""Tokenize once: the stream laid out from corpus pieces tokenized apart (in any order) is the
single run's stream, context for context (ctx_id, corpus, document, token ids, the budget's
cut) and count for count (``CorpusCounters``), whatever the corpora, budgets and order. No
model and no Dask: the pieces are tokenized here, one after another, finishing out of order."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from indexer.errors import CorpusError
from indexer.inputs.contexts import ContextStream
from indexer.inputs.corpus import parse_corpus_spec, record_count
from indexer.scaleout import pieces as pieces_module
from indexer.scaleout.pieces import Frontier
from indexer.scaleout.token_store import PieceStream, piece_path
from indexer.scaleout.tokenize import tokenize_into

from helpers.corpora import write_mixed_corpus
from helpers.paths import TOKENIZER_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Text and pre-tokenized Parquet (several row groups), hostile JSON Lines, .json and .txt."""
    folder = tmp_path_factory.mktemp("corpora")
    write_mixed_corpus(folder / "mixed.jsonl")
    rng = random.Random(0)
    texts = [" ".join(f"w{rng.randrange(60)}" for _ in range(rng.randrange(0, 40))) for _ in range(120)]
    pq.write_table(pa.table({"text": texts}), folder / "short.parquet", row_group_size=17)
    rows = [[rng.randrange(1, 90) for _ in range(rng.randrange(0, 30))] for _ in range(70)]
    pq.write_table(pa.table({"tokens": pa.array(rows, pa.list_(pa.int32()))}), folder / "ids.parquet", row_group_size=9)
    (folder / "array.json").write_text(json.dumps([{"text": t} for t in texts[:30]]))
    (folder / "one.txt").write_text(" ".join(texts[30:60]))
    return folder


def pieces_stream(stream: ContextStream, root, n_shards: int, seed: int, n_workers: int = 4,
                  seen: list | None = None):
    """The stream through the tokenize phase: pieces planned by the Frontier for ``n_workers``
    (so as many out at once per corpus), tokenized in a shuffled order, laid out, read back
    shard by shard. ``seen`` gets (pieces out, text tokens tokenized) per piece tokenized."""
    frontier = Frontier([record_count(s) for s in stream.specs], stream.budgets(), n_shards, n_workers)
    rng, pending = random.Random(seed), []
    while not frontier.finished():
        pending += frontier.next_pieces()
        assert pending, "the frontier waits for nothing"
        out = len(pending)
        piece = pending.pop(rng.randrange(out))
        result = tokenize_into(stream, piece, piece_path(root, piece.corpus, piece.start), 100)
        if seen is not None:
            seen.append((out, result["text_tokens"]))
        frontier.add(piece, result)
    layout = frontier.layout([s.name for s in stream.specs])
    bounds = layout.shard_bounds(n_shards)
    contexts = [c for lo, hi in zip(bounds[:-1], bounds[1:])
                for c in PieceStream(stream.specs, root, layout.shard(int(lo), int(hi))).contexts()]
    return contexts, layout


def as_rows(contexts) -> list[tuple]:
    return [(c.ctx_id, c.corpus, c.doc_id, c.token_ids.tolist()) for c in contexts]


CASES = [
    (["short", "ids"], 700, "shuffle"),
    (["short", "ids", "mixed"], 301, "shuffle"),
    (["short", "mixed"], None, "shuffle"),  # whole corpora (file order, as without a budget)
    (["mixed"], 130, "file"),
    (["mixed", "array", "one"], 250, "shuffle"),  # .json and .txt: one piece from the start
    (["short", "ids"], 5000, "file"),  # a budget past the corpora's end
    (["ids", "short"], 1, "shuffle"),  # one token: a corpus with a budget of none
]


@pytest.mark.parametrize("names,budget,order", CASES)
def test_pieces_lay_out_the_single_runs_stream(corpora, tokenizer, tmp_path, monkeypatch, names, budget, order):
    monkeypatch.setattr(pieces_module, "PROBE_DOCS", 3)
    files = {"short": "short.parquet", "ids": "ids.parquet", "mixed": "mixed.jsonl", "array": "array.json",
             "one": "one.txt"}
    specs = [parse_corpus_spec(str(corpora / files[n])) for n in names]
    single = ContextStream(specs, tokenizer, bos_id=0, ctx_len=16, max_tokens=budget, skip_bad_records=True,
                           order=order, seed=5, vocab_size=100)
    want = as_rows(single)
    for seed, workers in ((0, 1), (1, 4)):
        got, layout = pieces_stream(single, tmp_path / f"s{seed}", n_shards=8, seed=seed, n_workers=workers)
        assert as_rows(got) == want
        assert {k: v.to_dict() for k, v in layout.counters.items()} == {k: v.to_dict() for k, v in single.counters.items()}


def test_heavy_tailed_documents_are_not_tokenized_past_the_budget(tokenizer, tmp_path, monkeypatch):
    """A few long documents among short ones, so the first pieces' tokens per document are far
    off: pieces stop at the budget less what is known to come before them, and at most one per
    worker is out, so the tokens tokenized stay near the stream's."""
    monkeypatch.setattr(pieces_module, "PROBE_DOCS", 3)
    rng = random.Random(1)
    texts = [" ".join(f"w{rng.randrange(60)}" for _ in range(3000 if i % 9 == 5 else 5)) for i in range(200)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "tails.parquet", row_group_size=7)
    stream = ContextStream([parse_corpus_spec(str(tmp_path / "tails.parquet"))], tokenizer, bos_id=0, ctx_len=16,
                           max_tokens=2000, order="file", vocab_size=100)
    seen: list = []
    contexts, _ = pieces_stream(stream, tmp_path, n_shards=4, seed=0, n_workers=2, seen=seen)
    assert as_rows(contexts) == as_rows(stream)
    out, tokens = zip(*seen)
    assert max(out) <= 2  # one piece per worker out
    tokenized, longest = sum(tokens), max(tokens)
    whole = sum(len(tokenizer(t)["input_ids"]) for t in texts)
    assert whole > 10 * 2000 and longest <= 2000 + 15  # a piece stops a context past the budget
    assert tokenized <= 2 * (2000 + 15)  # without the limits: every piece planned from the first's 5 tokens a document


def test_shards_are_balanced_whatever_the_corpora(corpora, tokenizer, tmp_path):
    specs = [parse_corpus_spec(str(corpora / "short.parquet")), parse_corpus_spec(str(corpora / "ids.parquet"))]
    stream = ContextStream(specs, tokenizer, bos_id=0, ctx_len=16, max_tokens=1600, order="shuffle", vocab_size=100)
    _, layout = pieces_stream(stream, tmp_path, n_shards=4, seed=0)
    bounds = layout.shard_bounds(4)
    text = layout.text_tokens()
    per_shard = [int(text[lo:hi].sum()) for lo, hi in zip(bounds[:-1], bounds[1:])]
    assert sum(per_shard) == 1600 and max(per_shard) - min(per_shard) <= 2 * 15  # within a context of 1/4
    for lo, hi in zip(bounds[:-1], bounds[1:]):  # every shard holds both corpora (2 corpora, 4 shards)
        assert set(layout.corpus[lo:hi].tolist()) == {0, 1}


def test_a_bad_record_the_stream_reaches_is_the_error_a_single_run_gives(tmp_path, tokenizer):
    lines = [json.dumps({"text": f"doc {i} " + "word " * 5}) for i in range(30)]
    lines[20] = "{broken"
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    spec = parse_corpus_spec(str(tmp_path / "bad.jsonl"))
    for budget, fails in ((40, False), (400, True)):
        stream = ContextStream([spec], tokenizer, bos_id=0, ctx_len=16, max_tokens=budget, order="file")
        if fails:
            with pytest.raises(CorpusError, match="bad.jsonl:21: not valid JSON") as single:
                list(stream)
            with pytest.raises(CorpusError) as pieces:
                pieces_stream(stream, tmp_path / "p", n_shards=4, seed=0)
            assert str(pieces.value) == str(single.value)
        else:
            assert as_rows(pieces_stream(stream, tmp_path / "q", n_shards=4, seed=0)[0]) == as_rows(stream)


def test_layout_without_contexts_is_empty(tmp_path, tokenizer):
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": "  "}) + "\n")
    stream = ContextStream([parse_corpus_spec(str(tmp_path / "blank.jsonl"))], tokenizer, bos_id=0, ctx_len=16)
    contexts, layout = pieces_stream(stream, tmp_path, n_shards=4, seed=0)
    assert contexts == [] and layout.n_contexts == 0 and layout.counters["blank"].empty_documents == 1
    assert np.array_equal(layout.shard_bounds(4), [0, 0])
