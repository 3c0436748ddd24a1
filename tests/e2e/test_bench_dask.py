"""`scripts/bench_dask.py` runs end to end on tiny inputs and prints both throughputs and
their ratio. No timing is asserted (the integrator measures on an idle machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers.paths import ROOT


def test_bench_dask_prints_both_throughputs_and_the_ratio(tiny_model_dir):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_dask.py"), "--model", str(tiny_model_dir),
           "--tokens", "1200", "--ctx-len", "32", "--batch-size", "4"]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["tokens"] == 1200 and result["workers"] == 2
    for run in ("single", "dask_local_2"):
        assert result[run]["job_tokens_per_s"] > 0 and result[run]["stream_tokens_per_s"] > 0
    dask = result["dask_local_2"]
    assert len(dask["shard_stream_s"]) == dask["n_shards"] == 2  # one per worker: no shard under 1M tokens
    assert set(dask["phase_shares"]) == {"cluster", "open", "tokenize", "stream", "merge", "finalize"}
    assert sum(dask["tokens_tokenized_per_worker"]) >= 1200 and len(dask["model_load_s"]) == 2
    single, dask = result["single"], result["dask_local_2"]
    assert result["ratio"]["job"] == round(dask["job_tokens_per_s"] / single["job_tokens_per_s"], 3)
    assert result["ratio"]["stream"] == round(dask["stream_tokens_per_s"] / single["stream_tokens_per_s"], 3)
