"""Corpus specs, documents, contexts and the token budget; every bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from indexer.inputs.contexts import ContextStream
from indexer.inputs.corpus import CorpusCounters, iter_documents, parse_corpus_spec
from indexer.errors import CorpusError

from helpers.paths import TOKENIZER_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def docs(spec: str, skip: bool = False) -> tuple[list, CorpusCounters]:
    counters = CorpusCounters()
    return list(iter_documents(parse_corpus_spec(spec), counters, skip)), counters


@pytest.mark.parametrize("name, min_docs", [("code", 1000), ("prose", 400)])
def test_embedded_corpora(name, min_docs):
    spec = parse_corpus_spec(name)
    assert spec.kind == "embedded" and spec.name == name
    found, counters = docs(name)
    assert len(found) >= min_docs and counters.documents == len(found)
    assert all(text.strip() for _, text in found)
    if name == "code":
        assert any("def " in text for _, text in found[:50])


def test_labels_and_file_kinds(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"text": "x"}, {"text": "y"}, {"text": "z"}]))
    (tmp_path / "c.txt").write_text("a whole book\n\nin one document")
    pq.write_table(pa.table({"text": ["p", "q"], "other": [1, 2]}), tmp_path / "d.parquet")
    assert parse_corpus_spec(f"mine={tmp_path}/a.jsonl").name == "mine"
    assert parse_corpus_spec(f"{tmp_path}/a.jsonl").name == "a"
    assert [t for _, t in docs(f"{tmp_path}/a.jsonl")[0]] == ["one", "two"]
    assert [t for _, t in docs(f"{tmp_path}/b.json")[0]] == ["x", "y", "z"]
    assert docs(f"{tmp_path}/c.txt")[0] == [(0, "a whole book\n\nin one document")]
    assert [t for _, t in docs(f"{tmp_path}/d.parquet")[0]] == ["p", "q"]
    hf = parse_corpus_spec("pile=hf:monology/pile-uncopyrighted:validation")
    assert (hf.kind, hf.location, hf.split, hf.name) == ("hf", "monology/pile-uncopyrighted", "validation", "pile")


def test_hf_corpus_fails_clearly_offline():
    with pytest.raises(CorpusError, match="offline"):
        docs("hf:monology/pile-uncopyrighted")


@pytest.mark.parametrize(
    "spec, message",
    [("nosuchcorpus", "embedded corpora: code, prose"), ("/no/such/file.jsonl", "does not exist"),
     ("/tmp/file.csv", "unsupported corpus file type")],
)
def test_bad_corpus_specs(spec, message):
    with pytest.raises(CorpusError, match=message):
        parse_corpus_spec(spec)


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.jsonl"
    path.write_text('{"text": "x"}\n')
    # CI runs as root, who can read anything: deny access the way the OS would report it.
    monkeypatch.setattr("indexer.inputs.corpus_spec.os.access", lambda p, mode: False)
    with pytest.raises(CorpusError, match="not readable"):
        parse_corpus_spec(str(path))
    monkeypatch.undo()
    spec = parse_corpus_spec(str(path))

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("indexer.inputs.corpus_files.Path.read_bytes", denied)
    real_open = open

    def guarded_open(file, *args, **kwargs):  # JSON Lines are read line by line with open()
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded_open)
    with pytest.raises(CorpusError, match="cannot read corpus file .*Permission denied"):
        list(iter_documents(spec, CorpusCounters()))


def test_directory_is_not_a_corpus_file(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(CorpusError, match="not a file"):
        parse_corpus_spec(str(tmp_path / "dir.jsonl"))


def test_bad_jsonl_lines_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "good"}\nnot json\n{"title": "no text"}\n{"text": "fine"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: not valid JSON"):
        docs(str(path))
    found, counters = docs(str(path), skip=True)
    assert [t for _, t in found] == ["good", "fine"] and [d for d, _ in found] == [0, 3]
    assert counters.bad_records == 2
    path.write_text('{"text": "good"}\n{"title": "no text"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: record has no 'text'"):
        docs(str(path))


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n{"text": "ok"}\n')
    found, counters = docs(str(path))
    assert found[0][1] == "caf\ufffd" and counters.utf8_replaced == 1


def test_empty_documents_are_skipped(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"text": ""}\n{"text": "   \\n"}\n{"text": "real"}\n')
    found, counters = docs(str(path))
    assert found == [(2, "real")] and counters.empty_documents == 2


def test_parquet_without_text_column(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(CorpusError, match="no 'text' column"):
        docs(f"{tmp_path}/t.parquet")


def test_contexts_split_long_documents_and_interleave(tmp_path, tokenizer):
    long_text = " ".join(f"word{i}" for i in range(300))
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": long_text}) + "\n" + json.dumps({"text": "short one"}) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "other corpus"}) + "\n")
    specs = [parse_corpus_spec(f"{tmp_path}/a.jsonl"), parse_corpus_spec(f"{tmp_path}/b.jsonl")]
    stream = ContextStream(specs, tokenizer, bos_id=0, ctx_len=16)
    contexts = list(stream)
    ids = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    a_contexts = [c for c in contexts if c.corpus == "a" and c.doc_id == 0]
    assert all(c.token_ids[0] == 0 and len(c.token_ids) <= 16 for c in contexts)
    assert [t for c in a_contexts for t in c.token_ids[1:].tolist()] == ids  # nothing lost or repeated
    assert [c.ctx_id for c in contexts] == list(range(len(contexts)))
    assert contexts[0].corpus == "a" and contexts[1].corpus == "b"  # round-robin
    assert [c.ctx_id for c in stream] == [c.ctx_id for c in contexts]  # deterministic
    shard = [c.ctx_id for c in ContextStream(specs, tokenizer, 0, 16, shard=(1, 3))]
    assert shard == [i for i in range(len(contexts)) if i % 3 == 1]


@pytest.mark.parametrize("budget", [1, 7, 15, 16, 1001])
def test_token_budget_is_exact(budget, tokenizer):
    specs = [parse_corpus_spec("code"), parse_corpus_spec("prose")]
    contexts = list(ContextStream(specs, tokenizer, bos_id=0, ctx_len=32, max_tokens=budget))
    assert sum(c.n_text_tokens for c in contexts) == budget
    per_corpus = {name: sum(c.n_text_tokens for c in contexts if c.corpus == name) for name in ("code", "prose")}
    assert per_corpus["code"] - per_corpus["prose"] in (0, 1)


# --- one huge line: bounded memory ------------------------------------------------------------

PEAK_CHILD = """
import resource, sys
from transformers import AutoTokenizer
from indexer.inputs.contexts import ContextStream
from indexer.inputs.corpus import parse_corpus_spec
tokenizer = AutoTokenizer.from_pretrained(sys.argv[2])
stream = ContextStream([parse_corpus_spec(sys.argv[1])], tokenizer, bos_id=0, ctx_len=256, max_tokens=20000,
                       order=sys.argv[3])
contexts = list(stream)
assert sum(c.n_text_tokens for c in contexts) == 20000
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def peak_bytes(corpus, order: str) -> int:
    """Peak resident memory of a child that reads 20,000 tokens' contexts from ``corpus``."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(corpus), str(TOKENIZER_DIR), order],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_one_huge_line_is_read_in_bounded_memory(tmp_path):
    """A 16 MB single-line .txt and .jsonl record against a corpus of short documents: the peak
    grows by a few copies of the line and one piece's tokenization, not by the tokenizer's ~170
    bytes per character of a whole-line call (+2.6 GB here; 7.7 GB for a 47 MB line before)."""
    words = " ".join(f"word{i % 997} and some prose, {i}." for i in range(20000))
    (tmp_path / "small.jsonl").write_text("".join(json.dumps({"text": words[i:i + 3000]}) + "\n"
                                                  for i in range(0, len(words), 3000)))
    line = (words + " ") * (16_000_000 // (len(words) + 1))
    (tmp_path / "huge.txt").write_text(line)
    (tmp_path / "huge.jsonl").write_text(json.dumps({"text": line}) + "\n")
    base = peak_bytes(tmp_path / "small.jsonl", "file")
    for name, order in (("huge.txt", "shuffle"), ("huge.jsonl", "file")):
        extra = peak_bytes(tmp_path / name, order) - base
        # a few copies of the line (bytes, text, parsed text) and one 1 Mi-character tokenizer call
        # (~200 bytes per character); the old whole-line call took 2.6 GB more here
        assert extra < 4 * len(line) + 256 * 2**20, (name, order, f"{extra / 2**20:.0f} MiB more than {base / 2**20:.0f}")
