"""`neuroscope export` as a user runs it: listed in the help, a progress bar and a one-line
summary on success, one line and exit 1 on a bad option (no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers.fixtures_index import build_index

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def neuroscope(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "indexer.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=300)


def test_export_runs_and_refuses_in_one_line(tmp_path):
    ix = str(build_index(tmp_path / "idx"))
    assert "export" in neuroscope("--help").stdout
    done = neuroscope("export", ix, str(tmp_path / "out"), "--format", "neuron-record", "--layers", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "neuron-record export of 6 features written to" in done.stdout
    assert "export neuron-record" in done.stderr and "100%" in done.stderr  # tqdm's bar
    summary = json.loads((tmp_path / "out" / "export.json").read_text())
    assert summary["written"] == ["mlp_post"] and sorted(p.name for p in (tmp_path / "out" / "mlp_post" / "1").iterdir()) == [
        f"{n}.json" for n in range(6)]
    bad = neuroscope("export", ix, str(tmp_path / "o2"), "--format", "neuronpedia", "--site", "sae:none")
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and len(lines) == 1, bad.stderr
    assert lines[0].startswith("neuroscope: error: --site sae:none: no such site") and "mlp_post" in lines[0]
