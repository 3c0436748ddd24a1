"""Crash safety on a real tiny model: SIGKILL at named points then --resume gives the
uninterrupted index; corrupted checkpoints fall back to the previous one; failed writes keep
the last good checkpoint; a second run on the same folder is refused; merge never touches
its inputs and equals the single run's counts.

Kills are deterministic: ``NEUROSCOPE_TEST_KILL_AT=POINT:N`` (indexer.store.killpoint) makes
the run SIGKILL itself the N-th time it reaches POINT. The killed runs are started together.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from indexer.errors import IndexDirError
from indexer.run.checkpoint import CHECKPOINT, CHECKPOINTS, PREVIOUS_CHECKPOINT
from indexer.run.context_store import STORE_FILES
from indexer.run.engine import index
from indexer.run.lock import LOCK
from indexer.run.merge import merge
from indexer.run.outdir import TEMP_FILE
from indexer.store.manifest import read_manifest

from helpers.indexes import assert_same_index
from helpers.configs import base_config

# (point, hit): before the first checkpoint, mid-stream, inside checkpoint writes (the first
# one included), between the rotation's renames, at finalize, inside Parquet and manifest
# writes (a single run writes no state.npz: only shards keep one, for merge), inside a
# context store append (before the first checkpoint, and past one).
KILL_POINTS = [
    "batch:1", "checkpoint-write:1", "checkpoint-rotate:1", "batch:5", "checkpoint-write:3",
    "checkpoint-rotate:2", "finalize:1", "parquet-write:1", "parquet-write:5",
    "manifest-write:1", "store-write:1", "store-write:6",
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def small(model: str, out: str, **kw):
    return base_config(model, out, tokens=1200, checkpoint_every=2, **kw)


def run_cli_config(cfg, env_extra: dict | None = None, preexec=None) -> subprocess.Popen:
    code = ("import json, sys; from indexer.config import IndexConfig; from indexer.run.engine import index; "
            "from indexer.cli import main; sys.exit(main(['index', *json.loads(sys.argv[1]), '--quiet']))")
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg.to_argv())], env={**ENV, **(env_extra or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if TEMP_FILE.match(p.name) or p.name in CHECKPOINTS or p.name == LOCK or p.name in STORE_FILES)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> str:
    return str(tiny_model_dir)


@pytest.fixture(scope="module")
def whole(model_dir, tmp_path_factory) -> str:
    cfg = small(model_dir, str(tmp_path_factory.mktemp("whole") / "idx"))
    index(cfg, progress=False)
    return cfg.out


@pytest.fixture(scope="module")
def killed(model_dir, tmp_path_factory) -> dict[str, Path]:
    """One run killed at each point, all started at once; point -> its output folder."""
    root = tmp_path_factory.mktemp("killed")
    procs = {}
    for point in KILL_POINTS:
        out = root / point.replace(":", "-")
        procs[point] = (out, run_cli_config(small(model_dir, str(out)), {"NEUROSCOPE_TEST_KILL_AT": point}))
    for point, (out, proc) in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == -signal.SIGKILL, f"{point}: exit {proc.returncode}, not killed: {err[-2000:]}"
    shutil.copytree(root / "checkpoint-write-1", root / "first-write-snapshot")
    found = {point: out for point, (out, _) in procs.items()}
    found["first-write-snapshot"] = root / "first-write-snapshot"
    return found


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_then_resume_equals_the_uninterrupted_run(point, killed, whole, model_dir):
    out = killed[point]
    assert not (out / "manifest.json").exists()
    index(small(model_dir, str(out), resume=True), progress=False)
    assert_same_index(whole, str(out))
    assert leftovers(out) == []  # no temp files, checkpoints or lock in the finished index
    assert read_manifest(out)["counts"] == read_manifest(whole)["counts"]
    assert read_manifest(out)["corpora"] == read_manifest(whole)["corpora"]


def test_kill_in_the_first_checkpoint_write_does_not_leave_the_user_stuck(killed, whole, model_dir, tmp_path):
    # The run died inside its first checkpoint write: only a lock, a temp file and the context
    # store are there.
    source = killed["first-write-snapshot"]
    for how in ("plain", "overwrite"):
        out = tmp_path / how
        shutil.copytree(source, out)
        assert not any((out / c).exists() for c in CHECKPOINTS)
        index(small(model_dir, str(out), overwrite=how == "overwrite"), progress=False)
        assert_same_index(whole, str(out))


def test_corrupt_checkpoint_falls_back_to_the_previous_one(model_dir, whole, tmp_path, capfd):
    out = tmp_path / "c"
    proc = run_cli_config(small(model_dir, str(out)), {"NEUROSCOPE_TEST_KILL_AT": "batch:7"})
    proc.communicate(timeout=600)
    assert (out / CHECKPOINT).is_file() and (out / PREVIOUS_CHECKPOINT).is_file()
    data = (out / CHECKPOINT).read_bytes()
    (out / CHECKPOINT).write_bytes(data[: len(data) // 2])  # truncated
    index(small(model_dir, str(out), resume=True), progress=False)
    err = capfd.readouterr().err
    assert "checkpoint.npz fails its checksum" in err and "resuming from checkpoint.prev.npz" in err, err
    assert_same_index(whole, str(out))


def test_every_checkpoint_bad_is_one_clear_error(model_dir, tmp_path):
    out = tmp_path / "bad"
    proc = run_cli_config(small(model_dir, str(out)), {"NEUROSCOPE_TEST_KILL_AT": "batch:7"})
    proc.communicate(timeout=600)
    for name in CHECKPOINTS:
        if (out / name).exists():
            data = bytearray((out / name).read_bytes())
            data[-100] ^= 0xFF  # one flipped byte (an edited stream position would do the same)
            (out / name).write_bytes(bytes(data))
    with pytest.raises(IndexDirError, match="no usable checkpoint.*fails its checksum"):
        index(small(model_dir, str(out), resume=True), progress=False)


def old_format(sealed: bytes) -> bytes:
    """A state file as neuroscope wrote it before the exact sums: state format 1, float64
    [n] sums of x and x**2."""
    import hashlib
    import io

    import numpy as np

    from indexer.recorders import exactsum
    from indexer.run.checkpoint import unseal

    with np.load(io.BytesIO(unseal(sealed))) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key in [k for k in arrays if k.endswith(("stats/total", "stats/total_sq"))]:
        arrays[key] = np.array([float(u) / 2**64 for u in exactsum.units(arrays[key])])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    return b"NEUROSCOPE-STATE 1\n" + hashlib.sha256(payload).digest() + payload


def test_checkpoints_and_states_of_the_older_format_are_refused_in_one_line(model_dir, whole, tmp_path):
    from indexer.run.checkpoint import StateVersionError

    out = tmp_path / "old"
    proc = run_cli_config(small(model_dir, str(out)), {"NEUROSCOPE_TEST_KILL_AT": "batch:7"})
    proc.communicate(timeout=600)
    for name in CHECKPOINTS:
        if (out / name).exists():
            (out / name).write_bytes(old_format((out / name).read_bytes()))
    with pytest.raises(StateVersionError, match="checkpoint.npz was written in state format version 1.*reads version 3"):
        index(small(model_dir, str(out), resume=True), progress=False)
    proc = run_cli_config(small(model_dir, str(out), resume=True))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "state format version 1" in err
    shards = [str(tmp_path / f"shard{i}") for i in range(2)]  # only shards keep a state.npz
    for i, shard in enumerate(shards):
        index(small(model_dir, shard, shard=(i, 2)), progress=False)
    state = Path(shards[1]) / "state.npz"
    state.write_bytes(old_format(state.read_bytes()))
    with pytest.raises(StateVersionError, match="state.npz was written in state format version 1"):
        merge(shards, str(tmp_path / "m"), progress=False)


def test_failed_checkpoint_write_keeps_the_last_good_one(model_dir, whole, tmp_path, monkeypatch):
    import indexer.run.checkpoint as checkpoint

    calls = {"n": 0}
    real = checkpoint.write_state_file

    def failing(path, arrays, point=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, arrays, point)

    monkeypatch.setattr(checkpoint, "write_state_file", failing)
    out = tmp_path / "f"
    with pytest.raises(IndexDirError, match=r"cannot write a checkpoint .*No space left.*last good checkpoint is kept"):
        index(small(model_dir, str(out)), progress=False)
    monkeypatch.undo()
    assert leftovers(out) == sorted([CHECKPOINT, PREVIOUS_CHECKPOINT, *STORE_FILES])  # what a resume needs
    index(small(model_dir, str(out), resume=True), progress=False)
    assert_same_index(whole, str(out))


def test_failed_finalize_write_keeps_the_checkpoint(model_dir, whole, tmp_path, monkeypatch):
    from indexer.store.writer import IndexWriter

    real = IndexWriter.write
    calls = {"n": 0}

    def failing(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.EROFS, "Read-only file system", "somewhere.parquet")
        return real(self, *a, **kw)

    monkeypatch.setattr(IndexWriter, "write", failing)
    out = tmp_path / "g"
    with pytest.raises(IndexDirError, match=r"indexing failed writing somewhere.parquet: Read-only file system"):
        index(small(model_dir, str(out)), progress=False)
    monkeypatch.undo()
    assert (out / CHECKPOINT).is_file() and not (out / "manifest.json").exists()
    index(small(model_dir, str(out), resume=True), progress=False)
    assert_same_index(whole, str(out))


def test_full_disk_is_one_line_and_a_complete_index_stays_untouched(model_dir, whole, tmp_path):
    import resource

    before = {p: p.stat().st_mtime_ns for p in Path(whole).rglob("*")}

    def limit():  # a tiny "disk": writes past 4 KB fail with EFBIG instead of killing us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = tmp_path / "full"
    proc = run_cli_config(small(model_dir, str(out)), preexec=limit)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and "Traceback" not in err, err[-2000:]
    assert not (out / "manifest.json").exists()
    assert {p: p.stat().st_mtime_ns for p in Path(whole).rglob("*")} == before


def test_a_second_run_on_the_same_out_is_refused_and_a_stale_lock_is_taken_over(model_dir, whole, tmp_path):
    out = tmp_path / "locked"
    shards = [str(tmp_path / f"shard{i}") for i in range(2)]
    for i, shard in enumerate(shards):
        index(small(model_dir, shard, shard=(i, 2)), progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from indexer.run.lock import out_dir_lock\n"
         "with out_dir_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)", str(out)],
        env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IndexDirError, match=rf"being written by another neuroscope run \(pid {holder.pid} "):
            index(small(model_dir, str(out)), progress=False)
        with pytest.raises(IndexDirError, match="being written by another"):
            merge(shards, str(out), progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK).is_file()  # left by the killed holder: stale
    index(small(model_dir, str(out)), progress=False)
    assert_same_index(whole, str(out))


def test_merge_refuses_to_write_into_an_input_and_leaves_it_intact(model_dir, tmp_path):
    shards = []
    for i in range(2):
        cfg = small(model_dir, str(tmp_path / f"s{i}"), shard=(i, 2))
        index(cfg, progress=False)
        shards.append(cfg.out)
    before = sorted(str(p) for p in Path(shards[0]).rglob("*"))
    for out in (shards[0], str(Path(shards[0]) / "inside"), str(tmp_path)):
        with pytest.raises(IndexDirError, match="is \\(or holds, or is inside\\) the input"):
            merge(shards, out, overwrite=True, progress=False)
    assert sorted(str(p) for p in Path(shards[0]).rglob("*")) == before
    # A corrupt state.npz in a shard is one clear error.
    state = Path(shards[1]) / "state.npz"
    good = state.read_bytes()
    state.write_bytes(good[:100])
    with pytest.raises(IndexDirError, match="state.npz fails its checksum"):
        merge(shards, str(tmp_path / "m-bad"), progress=False)
    state.write_bytes(good)


def test_merge_counts_equal_the_single_run(model_dir, whole, tmp_path):
    shards = []
    for i in range(3):
        cfg = small(model_dir, str(tmp_path / f"s{i}"), shard=(i, 3))
        index(cfg, progress=False)
        shards.append(cfg.out)
    merge(shards, str(tmp_path / "m"), progress=False)
    assert read_manifest(tmp_path / "m")["counts"] == read_manifest(whole)["counts"]
    assert_same_index(whole, str(tmp_path / "m"))


def test_manifest_counts_cover_exactly_the_documents_indexed(model_dir, tmp_path):
    """Bad, empty and repaired records past a small budget (--skip-bad-records): the single run,
    a killed and resumed run, and shards + merge all count exactly the records up to the last
    document a context came from (in the shuffled order)."""
    from transformers import AutoTokenizer

    from helpers.corpora import expected_counts, write_mixed_corpus
    from helpers.paths import TOKENIZER_DIR

    corpus = tmp_path / "mixed.jsonl"
    records = write_mixed_corpus(corpus)
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))

    def config(out: str, **kw):
        return replace(small(model_dir, str(tmp_path / out), corpus=[str(corpus)], skip_bad_records=True, **kw),
                       tokens=300)

    want = {**expected_counts(records, tokenizer, 300, "shuffle", seed=config("x").seed),
            "documents_in_source": len(records), "order": "shuffle"}
    assert want["bad_records"] < sum(kind == "bad" for kind, _ in records)  # bad records lie past the budget

    def counts(out: str) -> dict:
        (entry,) = read_manifest(tmp_path / out)["corpora"]
        return {key: entry[key] for key in want}

    index(config("single"), progress=False)
    assert counts("single") == want
    proc = run_cli_config(config("killed"), {"NEUROSCOPE_TEST_KILL_AT": "batch:3"})
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    index(config("killed", resume=True), progress=False)
    assert counts("killed") == want
    shards = []
    for i in range(3):
        index(config(f"s{i}", shard=(i, 3)), progress=False)
        shards.append(str(tmp_path / f"s{i}"))
        assert counts(f"s{i}") == want  # every shard read the same stream
    merge(shards, str(tmp_path / "merged"), progress=False)
    assert counts("merged") == want
    assert read_manifest(tmp_path / "merged")["counts"] == read_manifest(tmp_path / "single")["counts"]


def test_overwrite_deletes_only_an_index(model_dir, whole, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(whole, out)
    (out / "my-notes.txt").write_text("keep me")
    index(small(model_dir, str(out), overwrite=True), progress=False)
    assert (out / "my-notes.txt").read_text() == "keep me"
    assert_same_index(whole, str(out))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "checkpoint.npz").write_text("not ours")
    (plain / "thesis.tex").write_text("precious")
    with pytest.raises(IndexDirError, match="does not look like a neuroscope index"):
        index(small(model_dir, str(plain), overwrite=True), progress=False)
    assert (plain / "thesis.tex").read_text() == "precious"
