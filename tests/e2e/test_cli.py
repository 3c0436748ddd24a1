"""The command line as a user meets it: help, one-line errors with a non-zero exit, sql output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.configs import base_config
from helpers.paths import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
SUBCOMMANDS = ["index", "merge", "analyze", "replay", "regex", "sql", "view", "export-html", "demo", "bench"]


def neuroscope(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "indexer.cli", *args], env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuroscope: error:"), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_lists_every_subcommand_and_is_fast():
    done = neuroscope("--help")
    assert done.returncode == 0
    for name in SUBCOMMANDS:
        assert name in done.stdout
    code = "import sys, indexer.cli; sys.exit(int(any(m in sys.modules for m in ('torch', 'transformer_lens'))))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "--help must not import torch"


def test_no_command_lists_the_commands():
    done = neuroscope()
    assert done.returncode == 2 and "required" not in done.stderr
    for name in SUBCOMMANDS:
        assert name in done.stderr


def test_index_help_shows_each_default_once_and_no_dead_options(tmp_path):
    help_text = " ".join(neuroscope("index", "--help").stdout.split())
    assert "(default: )" not in help_text and "(default: None)" not in help_text
    assert "--warmup-tokens" not in help_text  # it has done nothing since quantile edges come from all tokens
    ctx = help_text[help_text.index("--ctx-len CTX_LEN"):help_text.index("--batch-size BATCH_SIZE contexts")]
    assert ctx.count("default") == 1, ctx
    done = neuroscope("index", "--model", "toy-1l", "--corpus", "code", "--out", str(tmp_path / "x"), "--tokens", "300",
                      "--warmup-tokens", "100", "--dry-run")  # older command lines still run
    assert done.returncode == 0 and "--warmup-tokens is ignored" in done.stderr, done.stderr[-2000:]


def test_viewer_launcher_does_not_load_streamlit():
    """`neuroscope view` and `demo` import viewer.launch before the server starts: importing
    Streamlit's cached functions there printed "No runtime found" once per function."""
    code = "import sys, viewer.launch; sys.exit(int('streamlit' in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "No runtime found" not in done.stderr


def test_every_index_option_is_documented():
    help_text = neuroscope("index", "--help").stdout
    from dataclasses import fields

    from indexer.config import IndexConfig

    for f in fields(IndexConfig):
        assert "--" + f.name.replace("_", "-") in help_text
        assert f.metadata["help"].split()[0] in help_text


@pytest.fixture()
def index_args(tiny_model_dir, tmp_path):
    def make(*extra: str, corpus: str = "code", out: str | None = None) -> list[str]:
        return ["index", "--model", str(tiny_model_dir), "--corpus", corpus, "--out", out or str(tmp_path / "idx"),
                "--tokens", "300", "--ctx-len", "32", "--quiet", *extra]

    return make


@pytest.mark.parametrize(
    "model, needles",
    [("no-such-model", ["unknown model", "toy-1l"]), ("gelu-1l", ["offline", "--model PATH"]),
     ("/no/such/dir", ["does not exist"])],
)
def test_bad_models(model, needles, tmp_path):
    assert_one_line_error(neuroscope("index", "--model", model, "--corpus", "code", "--out", str(tmp_path / "o")), *needles)


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "README").write_text("hi")
    assert_one_line_error(neuroscope("index", "--model", str(tmp_path / "m"), "--corpus", "code", "--out", str(tmp_path / "o")),
                          "not a model folder")


def test_bad_corpora(index_args, tmp_path):
    assert_one_line_error(neuroscope(*index_args(corpus="/no/such.jsonl")), "does not exist")
    assert_one_line_error(neuroscope(*index_args(corpus="hf:owner/data")), "offline")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine text here"}\n{broken\n{"text": "more text"}\n')
    assert_one_line_error(neuroscope(*index_args(corpus=str(bad))), "bad.jsonl:2", "--skip-bad-records")
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_skip_bad_records_reports_the_count(index_args, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine text here"}\n{broken\n{"title": "x"}\n{"text": "caf\xe9 au lait"}\n{"text": ""}\n')
    done = neuroscope(*index_args("--skip-bad-records", corpus=str(bad)))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    (corpus,) = manifest["corpora"]
    assert (corpus["bad_records"], corpus["utf8_replaced"], corpus["empty_documents"], corpus["documents"]) == (2, 1, 1, 2)


def test_ctx_len_larger_than_the_model(index_args):
    assert_one_line_error(neuroscope(*index_args("--ctx-len", "100000")), "larger than the model's context (64)")


def test_non_empty_out_is_refused_and_kept(index_args, tmp_path):
    out = tmp_path / "idx"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert_one_line_error(neuroscope(*index_args()), "not empty", "--resume", "--overwrite")
    assert_one_line_error(neuroscope(*index_args("--overwrite")), "does not look like a neuroscope index")
    assert (out / "precious.txt").read_text() == "keep me"


def test_bad_options(index_args):
    assert_one_line_error(neuroscope(*index_args("--quantiles", "0.9,0.5")), "--quantiles")
    assert_one_line_error(neuroscope(*index_args("--shard", "3/2")), "--shard")
    assert_one_line_error(neuroscope(*index_args("--sites", "mlp_mid")), "SoLU")
    assert_one_line_error(neuroscope(*index_args("--layers", "7")), "layers 0..1")
    assert_one_line_error(neuroscope(*index_args("--order", "random")), "--order", "shuffle or file")


def test_old_site_name_is_deprecated_but_understood(index_args):
    done = neuroscope(*index_args("--sites", "mlp_pre_ln"))  # a GELU model: mlp_mid is refused
    warning, error = done.stderr.strip().splitlines()
    assert warning == "neuroscope: warning: site 'mlp_pre_ln' is deprecated; it is now called 'mlp_mid'"
    assert error.startswith("neuroscope: error: --sites mlp_mid") and "SoLU" in error and done.returncode != 0


def test_help_documents_order_sites_and_token_corpora():
    help_text = " ".join(neuroscope("index", "--help").stdout.split())
    for needle in ("--order", "shuffle", "mlp_pre", "mlp_mid", "mlp_post", "'tokens' column", "--tokens-bos"):
        assert needle in help_text, needle


def test_index_then_sql_in_every_format(index_args, tmp_path):
    assert neuroscope(*index_args()).returncode == 0
    out = str(tmp_path / "idx")
    table = neuroscope("sql", out, "SELECT layer, neuron, activation, token_str FROM examples WHERE kind = 'top' LIMIT 5")
    assert table.returncode == 0 and "activation" in table.stdout and len(table.stdout.splitlines()) >= 7
    rows = json.loads(neuroscope("sql", out, "SELECT neuron, max FROM neurons WHERE layer = 0 ORDER BY neuron LIMIT 3", "--format", "json").stdout)
    assert [r["neuron"] for r in rows] == [0, 1, 2]
    csv = neuroscope("sql", out, "dead-neurons", "--format", "csv")
    assert csv.returncode == 0 and csv.stdout.splitlines()[0].startswith("site,layer,neuron")
    csv = neuroscope("sql", out, "SELECT DISTINCT neuron FROM neurons ORDER BY neuron LIMIT 3", "--format", "csv")
    assert csv.stdout == "neuron\n0\n1\n2\n"  # no blank last line (wc -l and CSV readers would count a row)
    assert_one_line_error(neuroscope("sql", out, "DROP VIEW examples"), "read-only")
    assert_one_line_error(neuroscope("sql", out, "SELECT * FROM read_csv('/etc/passwd')"))
    assert_one_line_error(neuroscope("sql", str(tmp_path), "SELECT 1"), "not a neuroscope index")


def test_demo_indexes_the_embedded_default_and_summarises(tmp_path):
    """One demo run (its analyses take minutes on 2 cores) into folders that already hold an
    analyzed index and a head index, as a rerun finds them: it must replace both."""
    from indexer.analyses.common import Options
    from indexer.analyses.runner import analyze
    from indexer.run.engine import index

    out = tmp_path / "demo"
    index(base_config("toy-1l", str(out), corpus=["code"], tokens=300), progress=False)
    analyze(out, only="flags", options=Options(device="cpu", progress=False))
    index(base_config("toy-attn-2l", str(tmp_path / "demo-heads"), corpus=["prose"], tokens=300), progress=False)
    done = neuroscope("demo", "--tokens", "3000", "--no-view", "--out", str(out))  # reruns replace the demo index
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Neurons with the highest activations" in done.stdout and "induction" in done.stdout.lower()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == "toy-1l" and [c["name"] for c in manifest["corpora"]] == ["code", "prose"]
    assert manifest["counts"]["tokens"] == 3000  # the earlier index is gone
    heads = json.loads((tmp_path / "demo-heads" / "manifest.json").read_text())  # the head pages' model
    assert heads["model"]["name"] == "toy-attn-2l" and "where the best induction head attends" in done.stdout
    assert [c["name"] for c in heads["corpora"]] == ["code", "prose"] and heads["counts"]["tokens"] == 3000
