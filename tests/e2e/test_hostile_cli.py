"""The command line under careless or hostile use: every case is one line on stderr, a
non-zero exit and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.fixtures_index import build_index

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def neuroscope(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "indexer.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=300)


def one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuroscope: error:"), done.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def ix(tmp_path_factory):
    return str(build_index(tmp_path_factory.mktemp("ix") / "idx"))


@pytest.mark.parametrize("args, needle", [
    (["--limit", "-1"], "row limit -1"), (["--timeout", "nan"], "time limit nan"),
    (["--timeout", "inf"], "time limit inf"), (["--timeout", "0"], "time limit 0"),
])
def test_sql_limits(ix, args, needle):
    one_line_error(neuroscope("sql", ix, "SELECT 1", *args), needle)


def test_sql_refusals_and_unusual_json(ix):
    one_line_error(neuroscope("sql", ix, "ATTACH 'x.db'"), "read-only")
    one_line_error(neuroscope("sql", ix, "SELECT * FROM read_csv('/etc/passwd')"))
    done = neuroscope("sql", ix, "SELECT 1.5::DECIMAL(4,2) d, INTERVAL 3 DAY i, 'x'::BLOB b, DATE '2020-01-01' t, "
                      "union_value(n := 1) u, MAP {'a': 1} m", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["d"] == 1.5
    done = neuroscope("sql", ix, "SELECT * FROM range(20)", "--limit", "5")
    assert done.returncode == 0 and "truncated at 5 rows" in done.stderr


@pytest.fixture()
def index_args(tiny_model_dir, tmp_path):
    def make(*extra: str, corpus: str = "code", out: str | None = None) -> list[str]:
        return ["index", "--model", str(tiny_model_dir), "--corpus", corpus, "--out", out or str(tmp_path / "out"),
                "--tokens", "300", "--ctx-len", "32", "--quiet", *extra]

    return make


def test_hostile_index_inputs(index_args, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text('{"text": "   "}\n\n{"text": ""}\n')
    (tmp_path / "bad.jsonl").write_text("nope\n[1]\n")
    os.mkfifo(tmp_path / "fifo.jsonl")
    one_line_error(neuroscope(*index_args(corpus=str(tmp_path / "empty.jsonl"))), "nothing to index")
    one_line_error(neuroscope(*index_args(corpus=str(tmp_path / "blank.jsonl"))), "nothing to index", "2 empty")
    one_line_error(neuroscope(*index_args("--skip-bad-records", corpus=str(tmp_path / "bad.jsonl"))),
                   "nothing to index", "2 bad records")
    one_line_error(neuroscope(*index_args(corpus=str(tmp_path / "fifo.jsonl"))), "not a regular file")
    one_line_error(neuroscope(*index_args("--sites", ",")), "--sites")
    one_line_error(neuroscope(*index_args("--resume", "--overwrite")), "contradict")
    one_line_error(neuroscope(*index_args("--top-k", "100000000")), "memory estimate", "--allow-large")
    for pool in ("lots", "-1", "33", "nan"):
        one_line_error(neuroscope(*index_args("--window-pool", pool)), "--window-pool", "auto or a number")
    assert not (tmp_path / "out").exists()  # no refused run leaves a folder behind


def test_overwrite_through_a_symlink_refuses_a_folder_that_is_not_an_index(index_args, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "thesis.tex").write_text("precious")
    (tmp_path / "link").symlink_to(real)
    one_line_error(neuroscope(*index_args("--overwrite", out=str(tmp_path / "link"))), "does not look like")
    assert (real / "thesis.tex").read_text() == "precious"
