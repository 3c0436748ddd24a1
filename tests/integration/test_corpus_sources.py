"""Where documents come from and in what order: seeded shuffles over the whole corpus, hf:
datasets from a local folder or the local Hugging Face cache, pre-tokenized rows."""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from indexer.errors import CorpusError
from indexer.inputs.contexts import ContextStream
from indexer.inputs.corpus import CorpusCounters, parse_corpus_spec, read_documents

from helpers.paths import TOKENIZER_DIR

TEXTS = [f"document {i}: " + " ".join(f"w{i}_{j}" for j in range(i % 5 + 1)) for i in range(40)]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def read(spec: str, order: str = "file", seed: int = 0, skip: bool = False) -> tuple[list, CorpusCounters]:
    counters = CorpusCounters()
    return list(read_documents(parse_corpus_spec(spec), counters, skip, order, seed)), counters


def first_appearances(contexts) -> list[tuple[str, int]]:
    return list(dict.fromkeys((c.corpus, c.doc_id) for c in contexts))


# --- order ----------------------------------------------------------------------------------


def test_shuffle_reads_every_parquet_row_once_across_row_groups(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": TEXTS}), path, row_group_size=7)  # 6 row groups
    found, counters = read(str(path), "shuffle", seed=3)
    doc_ids = [d for d, _ in found]
    assert sorted(doc_ids) == list(range(len(TEXTS))) and doc_ids != sorted(doc_ids)
    assert all(text == TEXTS[d] for d, text in found)  # doc_id still names the row in the file
    assert counters.documents_in_source == len(TEXTS) and counters.order == "shuffle"
    again, _ = read(str(path), "shuffle", seed=3)
    other, _ = read(str(path), "shuffle", seed=4)
    assert again == found and [d for d, _ in other] != doc_ids
    assert [d for d, _ in read(f"relabelled={path}", "shuffle", seed=3)[0]] == doc_ids  # the label plays no part
    assert read(str(path), "file")[0] == list(enumerate(TEXTS))


def test_shuffle_of_json_lines_keeps_line_numbers(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" + ("\n" if i == 3 else "") for i, t in enumerate(TEXTS)))
    in_file, _ = read(str(path))
    shuffled, _ = read(str(path), "shuffle", seed=1)
    assert sorted(shuffled) == sorted(in_file) and shuffled != in_file
    assert in_file[4] == (5, TEXTS[4])  # the blank line after record 3 still counts as a line


def test_budget_draws_a_prefix_of_the_seeded_order_from_the_whole_corpus(tokenizer):
    specs = [parse_corpus_spec("code"), parse_corpus_spec("prose")]
    n_docs = {name: len(read(name)[0]) for name in ("code", "prose")}
    order = {name: [d for d, _ in read(name, "shuffle", seed=0)[0]] for name in ("code", "prose")}
    stream = ContextStream(specs, tokenizer, bos_id=0, ctx_len=32, max_tokens=60_000, order="shuffle", seed=0)
    contexts = list(stream)
    assert sum(c.n_text_tokens for c in contexts) == 60_000
    for name in ("code", "prose"):
        used = [d for corpus, d in first_appearances(contexts) if corpus == name]
        assert used == order[name][: len(used)]  # exactly the first documents of the seeded order
        counters = stream.counters[name]
        assert counters.documents_used == len(used) == counters.documents  # not read-ahead
        assert counters.order == "shuffle" and counters.documents_in_source >= n_docs[name]
        # spread over the whole corpus, not a prefix of the file
        assert len(used) >= 8 and max(used) > 0.6 * n_docs[name] and min(used) < 0.4 * n_docs[name]
        assert abs(np.mean(used) / n_docs[name] - 0.5) < 0.25
    file_order = ContextStream(specs, tokenizer, bos_id=0, ctx_len=32, max_tokens=60_000, order="file")
    firsts = first_appearances(list(file_order))
    assert [d for c, d in firsts if c == "code"] == list(range(file_order.counters["code"].documents_used))


def test_shuffled_contexts_hold_their_documents_tokens(tokenizer):
    spec = parse_corpus_spec("prose")
    texts = dict(read("prose")[0])
    contexts = list(ContextStream([spec], tokenizer, bos_id=0, ctx_len=64, max_tokens=5000, order="shuffle", seed=7))
    by_doc: dict[int, list[int]] = {}
    for c in contexts:
        assert c.token_ids[0] == 0
        by_doc.setdefault(c.doc_id, []).extend(c.token_ids[1:].tolist())
    for doc_id, ids in by_doc.items():
        whole = tokenizer(texts[doc_id], add_special_tokens=False)["input_ids"]
        assert ids == whole[: len(ids)]
        assert len(ids) == len(whole) or doc_id == contexts[-1].doc_id  # only the last is cut by the budget


def test_shards_of_a_shuffled_stream_partition_it(tokenizer):
    specs = [parse_corpus_spec("code"), parse_corpus_spec("prose")]
    args = dict(bos_id=0, ctx_len=32, max_tokens=3000, order="shuffle", seed=5)
    whole = [(c.ctx_id, c.corpus, c.doc_id, c.token_ids.tolist()) for c in ContextStream(specs, tokenizer, **args)]
    parts = [(c.ctx_id, c.corpus, c.doc_id, c.token_ids.tolist())
             for i in range(3) for c in ContextStream(specs, tokenizer, shard=(i, 3), **args)]
    assert sorted(parts) == whole


def test_without_a_budget_every_document_is_read_in_file_order(tokenizer):
    stream = ContextStream([parse_corpus_spec("prose")], tokenizer, bos_id=0, ctx_len=64, order="shuffle")
    firsts = [d for _, d in first_appearances(stream)]
    assert firsts == sorted(firsts) and stream.counters["prose"].order == "file"
    assert stream.counters["prose"].documents_used == len(read("prose")[0])


# --- hf: datasets without the hub -----------------------------------------------------------


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": TEXTS}).save_to_disk(str(tmp_path / "saved"))
    found, counters = read(f"hf:{tmp_path}/saved")
    assert found == list(enumerate(TEXTS)) and counters.documents_in_source == len(TEXTS)
    assert parse_corpus_spec(f"hf:{tmp_path}/saved").name == "saved"
    shuffled, _ = read(f"hf:{tmp_path}/saved", "shuffle", seed=2)
    assert sorted(shuffled) == found and shuffled != found
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": TEXTS[:3]}),
                                   "validation": datasets.Dataset.from_dict({"text": TEXTS[3:5]})})
    splits.save_to_disk(str(tmp_path / "dict"))
    assert read(f"hf:{tmp_path}/dict:validation")[0] == [(0, TEXTS[3]), (1, TEXTS[4])]
    with pytest.raises(CorpusError, match="no split 'test'.*train, validation"):
        read(f"hf:{tmp_path}/dict:test")


def test_hf_folder_of_data_files(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    assert read(f"hf:{folder}")[0] == list(enumerate(TEXTS))
    with pytest.raises(CorpusError, match="no such dataset folder"):
        read(f"hf:{tmp_path}/missing")


def test_hf_hub_name_from_the_local_cache_offline(tmp_path, monkeypatch):
    """A dataset loaded once online sits in the datasets cache as OWNER___NAME/...: build that
    layout here from a local folder, then read it by its hub name with the hub switched off."""
    import datasets

    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    assert datasets.config.HF_HUB_OFFLINE
    with pytest.raises(CorpusError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE=1"):
        read("hf:someone/tiny-corpus")
    folder = tmp_path / "src"
    folder.mkdir()
    pq.write_table(pa.table({"text": TEXTS}), folder / "train.parquet")
    datasets.load_dataset(str(folder), split="train")
    (built,) = [p for p in glob.glob(str(cache / "*")) if os.path.isdir(p)]
    shutil.move(built, cache / "someone___tiny-corpus")
    for arrow in glob.glob(str(cache / "someone___tiny-corpus/*/*/*/*.arrow")):
        head, name = os.path.split(arrow)
        os.rename(arrow, os.path.join(head, name.replace(os.path.basename(built), "tiny-corpus")))
    found, _ = read("hf:someone/tiny-corpus")
    assert found == list(enumerate(TEXTS))
    assert parse_corpus_spec("hf:someone/tiny-corpus").name == "tiny-corpus"


# --- pre-tokenized rows ---------------------------------------------------------------------


def test_token_rows_are_read_as_given(tmp_path, tokenizer):
    rows = [[0, 5, 6, 7], [8, 9], [], [0], [10, 11, 12, 13, 14, 15]]
    pq.write_table(pa.table({"tokens": pa.array(rows, pa.list_(pa.int32()))}), tmp_path / "t.parquet")
    found, counters = read(f"{tmp_path}/t.parquet")
    assert [(d, ids.tolist()) for d, ids in found] == [(0, [0, 5, 6, 7]), (1, [8, 9]), (3, [0]), (4, rows[4])]
    assert counters.kind == "tokens" and counters.empty_documents == 1
    spec = [parse_corpus_spec(f"{tmp_path}/t.parquet")]

    def contexts(bos: str, ctx_len: int = 4) -> list[tuple[int, list[int]]]:
        stream = ContextStream(spec, tokenizer, bos_id=0, ctx_len=ctx_len, tokens_bos=bos, vocab_size=100)
        return [(c.doc_id, c.token_ids.tolist()) for c in stream]

    assert contexts("auto") == [(0, [0, 5, 6, 7]), (1, [0, 8, 9]), (4, [0, 10, 11, 12]), (4, [0, 13, 14, 15])]
    assert contexts("always") == [(0, [0, 0, 5, 6]), (0, [0, 7]), (1, [0, 8, 9]), (3, [0, 0]),
                                  (4, [0, 10, 11, 12]), (4, [0, 13, 14, 15])]
    assert contexts("never") == [(0, [0, 5, 6, 7]), (1, [8, 9]), (4, [10, 11, 12, 13]), (4, [14, 15])]
    with pytest.raises(CorpusError, match="row 4 holds token id 15, beyond the model's vocabulary"):
        list(ContextStream(spec, tokenizer, bos_id=0, ctx_len=4, vocab_size=15))
    skipping = ContextStream(spec, tokenizer, bos_id=0, ctx_len=4, vocab_size=15, skip_bad_records=True)
    assert [c.doc_id for c in skipping] == [0, 1] and skipping.counters["t"].bad_records == 1


def test_bad_token_rows(tmp_path):
    pq.write_table(pa.table({"tokens": [["a", "b"], ["c"]]}), tmp_path / "s.parquet")
    with pytest.raises(CorpusError, match=r"s.parquet: row 0: 'tokens' must be a list of non-negative integer"):
        read(f"{tmp_path}/s.parquet")
    found, counters = read(f"{tmp_path}/s.parquet", skip=True)
    assert found == [] and counters.bad_records == 2
    pq.write_table(pa.table({"body": [1]}), tmp_path / "n.parquet")
    with pytest.raises(CorpusError, match="no 'text' column"):
        read(f"{tmp_path}/n.parquet")
    with pytest.raises(CorpusError, match="no 'text' or 'tokens' column"):
        read(f"{tmp_path}/n.parquet", "shuffle")


def test_hf_token_rows(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"tokens": [[0, 1, 2], [3, 4]]}).save_to_disk(str(tmp_path / "tok"))
    found, counters = read(f"hf:{tmp_path}/tok")
    assert [(d, ids.tolist()) for d, ids in found] == [(0, [0, 1, 2]), (1, [3, 4])] and counters.kind == "tokens"


def test_shuffle_buffer_of_a_stream():
    from indexer.inputs.corpus import buffer_shuffled

    items = list(range(200))
    out = list(buffer_shuffled(iter(items), 10, seed=1))
    assert sorted(out) == items and out != items and out == list(buffer_shuffled(iter(items), 10, seed=1))
    # an item leaves the buffer only after it entered: item i is handed out no earlier than step i - 10
    assert all(position >= item - 10 for position, item in enumerate(out))
    assert list(buffer_shuffled(iter(items[:5]), 10, seed=1)) != items[:5]  # shorter than the buffer


# --- counts under a budget ------------------------------------------------------------------


@pytest.mark.parametrize("order", ["file", "shuffle"])
def test_counts_cover_exactly_the_documents_the_stream_used(tokenizer, tmp_path, order):
    """Bad, empty and repaired records past the budget, and documents tokenized ahead, are not
    counted; a budget that outlasts the corpus counts everything."""
    from helpers.corpora import expected_counts, write_mixed_corpus

    records = write_mixed_corpus(tmp_path / "mixed.jsonl")
    spec = parse_corpus_spec(str(tmp_path / "mixed.jsonl"))
    total_bad = sum(kind == "bad" for kind, _ in records)
    for budget in (7, 40, 41, 130, 333, None):
        stream = ContextStream([spec], tokenizer, bos_id=0, ctx_len=16, max_tokens=budget, order=order, seed=3,
                               skip_bad_records=True)
        contexts = list(stream)
        counters = stream.counters["mixed"]
        want = expected_counts(records, tokenizer, budget, order, seed=3)
        got = {key: getattr(counters, key) for key in want}
        assert got == want, (budget, order)
        assert counters.documents_used == len({c.doc_id for c in contexts})
        if budget is not None and budget < 200:
            assert got["bad_records"] < total_bad  # the corpus is hostile: bad records lie past the budget
    assert got["bad_records"] == total_bad and len(counters.bad_examples) == 5


def test_counts_do_not_depend_on_read_ahead(tokenizer, tmp_path, monkeypatch):
    """The same budget with tokenizer batches of 1 or 8 documents (reading ahead 0 or 7)."""
    import indexer.inputs.contexts as contexts
    from helpers.corpora import write_mixed_corpus

    write_mixed_corpus(tmp_path / "mixed.jsonl")
    spec = parse_corpus_spec(str(tmp_path / "mixed.jsonl"))
    seen = []
    for per_encode in (1, 8):
        monkeypatch.setattr(contexts, "DOCS_PER_ENCODE", per_encode)
        stream = ContextStream([spec], tokenizer, bos_id=0, ctx_len=16, max_tokens=60, skip_bad_records=True)
        list(stream)
        seen.append(stream.counters["mixed"].to_dict())
    assert seen[0] == seen[1]
