"""Windows captured while streaming, and the context store, on a real tiny model: the index
equals the one a brute-force finalize gives (every kept context run through the model again);
finalize re-runs only the contexts of samples whose window the pool missed, and never reads
the corpus; shards keep their store
and merge reads it."""

from __future__ import annotations

from dataclasses import replace

import pytest

import indexer.run.attention_rows as attention_rows
import indexer.run.finalize as finalize
import indexer.run.head_attention as head_attention
from indexer.api import Index
from indexer.inputs.contexts import ContextStream
from indexer.run.context_store import STORE_FILES
from indexer.run.engine import index
from indexer.run.merge import merge

from helpers.configs import base_config
from helpers.indexes import assert_same_index


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> str:
    return str(tiny_model_dir)


def _no_corpus(self, wanted=None):
    raise AssertionError("finalize read the corpus again")


@pytest.mark.parametrize("store_contexts, backend", [("kept", "numba"), ("all", "numba"), ("kept", "torch")])
def test_captured_windows_equal_a_brute_force_finalize(model_dir, tmp_path, monkeypatch, store_contexts, backend):
    monkeypatch.setenv("NEUROSCOPE_RECORDER_BACKEND", backend)  # torch: what an accelerator runs
    monkeypatch.setattr(attention_rows, "CUT_ON_DEVICE", backend == "torch")  # rows cut as on an accelerator
    cfg = base_config(model_dir, str(tmp_path / "captured"), store_contexts=store_contexts)
    brute = replace(cfg, out=str(tmp_path / "brute"))
    with monkeypatch.context() as m:
        m.setattr(finalize, "FORWARD_ALL", True)
        m.setattr(head_attention, "FORWARD_ALL", True)
        index(brute, progress=False)
    real_contexts = ContextStream.contexts
    calls = []

    def stream_only_once(self, wanted=None):  # the streaming pass reads the corpus; finalize must not
        assert wanted is None and not calls, "finalize read the corpus again"
        calls.append(1)
        return real_contexts(self, wanted)

    monkeypatch.setattr(ContextStream, "contexts", stream_only_once)
    index(cfg, progress=False)
    assert calls == [1]
    assert_same_index(brute.out, cfg.out)
    with Index.open(cfg.out) as ix:
        n_rerun = ix.manifest["timing"]["window_forward_contexts"]
        assert ix.manifest["timing"]["finalize_forward_contexts"] >= n_rerun
        sample_ctxs = ix.sql("SELECT count(DISTINCT ctx_id) AS n FROM (SELECT ctx_id FROM examples WHERE kind = 'quantile' "
                             "UNION ALL SELECT ctx_id FROM head_examples WHERE kind = 'quantile')")["n"][0]
        kept = ix.sql("SELECT count(DISTINCT ctx_id) AS n FROM (SELECT ctx_id FROM examples "
                      "UNION ALL SELECT ctx_id FROM head_examples)")["n"][0]
        # Windows that reach BOS carry its activation (from the stream, as the forward gives it).
        assert ix.sql("SELECT count(*) AS n FROM examples WHERE kind = 'top' AND window_start = 0")["n"][0] > 0
        head_ctxs = ix.sql("SELECT count(DISTINCT ctx_id) AS n FROM head_examples")["n"][0]
        n_attention = ix.manifest["timing"]["attention_forward_contexts"]
    with Index.open(brute.out) as ix:
        assert ix.manifest["timing"]["finalize_forward_contexts"] == kept
        assert ix.manifest["timing"]["attention_forward_contexts"] == head_ctxs
    # The head examples' attention rows were cut from the stream's patterns, nearly all of them.
    assert n_attention < head_ctxs / 5, (n_attention, head_ctxs)
    # Nearly every kept context holds a sample here; most samples' windows came from the stream's pool.
    # (27 of 82 on this 2,500-token index: the compact state's pool holds 3 entries per sample,
    # and here every context holds samples of many features; the old 5-per-sample pool re-ran 3)
    assert sample_ctxs <= kept and n_rerun < sample_ctxs / 2, (n_rerun, sample_ctxs, kept)
    assert not any((tmp_path / "captured" / name).exists() for name in STORE_FILES)  # a single run drops it


def test_shards_keep_their_store_and_merge_reads_it(model_dir, tmp_path, monkeypatch):
    single = base_config(model_dir, str(tmp_path / "single"))
    index(single, progress=False)
    shards = []
    for i in range(2):
        cfg = replace(single, out=str(tmp_path / f"shard{i}"), shard=(i, 2))
        index(cfg, progress=False)
        assert all((tmp_path / f"shard{i}" / name).is_file() for name in STORE_FILES)
        shards.append(cfg.out)
    monkeypatch.setattr(ContextStream, "contexts", _no_corpus)
    merge(shards, str(tmp_path / "merged"), progress=False)
    assert_same_index(single.out, str(tmp_path / "merged"))
    with Index.open(str(tmp_path / "merged")) as ix:  # the shards' pools carry into the merge
        # (50 of 82 on this 2,500-token index with the compact 3-per-sample pools; 5-per-sample: < 16)
        assert ix.manifest["timing"]["window_forward_contexts"] < ix.manifest["counts"]["contexts"] * 0.7
    assert not any((tmp_path / "merged" / name).exists() for name in STORE_FILES)


def test_re_runs_read_only_the_sites_that_missed_windows(model_dir, tmp_path, monkeypatch):
    """When one site's pool missed windows, finalize's re-runs hook that site alone (the pass
    stops after its layer), and the index still equals a brute-force finalize."""
    cfg = base_config(model_dir, str(tmp_path / "captured"))
    brute = replace(cfg, out=str(tmp_path / "brute"))
    with monkeypatch.context() as m:
        m.setattr(finalize, "FORWARD_ALL", True)
        m.setattr(head_attention, "FORWARD_ALL", True)
        index(brute, progress=False)
    real_collect, real_plan = finalize.collect_examples, finalize.rerun_plan
    lossy, plans = [], []

    def lose_one_sites_windows(site, rec, bands=None, window=None):
        examples = real_collect(site, rec, bands, window)
        lossy.append(lossy[0] if lossy else site)
        if site == lossy[0]:  # the plan's first site: as if its pool had missed every sample
            lost = examples.kind == 1
            examples.captured[lost] = False
            examples.window_values[lost] = 0.0
        return examples

    def record(plan, *args):
        plans.append((len(plan), real_plan(plan, *args)))
        return plans[-1][1]

    monkeypatch.setattr(finalize, "collect_examples", lose_one_sites_windows)
    monkeypatch.setattr(finalize, "rerun_plan", record)
    monkeypatch.setattr(finalize, "missing_rows", lambda run, sets: {})  # head rows: head_attention's own pass
    index(cfg, progress=False)
    assert_same_index(brute.out, cfg.out)
    assert plans and all(n > 1 and plan == (lossy[0],) for n, plan in plans), (plans, lossy[0])
    with Index.open(cfg.out) as ix:
        assert ix.manifest["timing"]["window_forward_contexts"] > 0
