"""`scripts/scaling_model.py`: the README's table of a 256M-token run, and the costs it reads
from a Dask job's manifest (no model, no cluster)."""

from __future__ import annotations

import importlib.util
import json
import sys

from helpers.paths import ROOT


def load():
    spec = importlib.util.spec_from_file_location("scaling_model", ROOT / "scripts" / "scaling_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_table_has_every_shape_and_gpu_count(capsys):
    model = load()
    assert model.main([]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "GPUs" not in line]
    assert len(rows) == 2 * (1 + 3 * 2)  # one process, then 1, 8 and 64 GPUs with two shard counts each
    gpt2 = model.dask_job(model.SHAPES[0], 8, 256_000_000, 8, model.MEASURED)
    assert gpt2["stream"] > 256_000_000 / (8 * model.SHAPES[0].gpu_tokens_per_s)  # the state writes on top


def test_costs_come_from_a_jobs_manifest(tmp_path, capsys):
    model = load()
    manifest = {
        "sites": [{"name": "mlp_post", "layer": 0, "n_features": 1000}],
        "timing": {"finalize_seconds": 2.0},
        "dask": {
            "pieces": [{"tokens_tokenized": 3_000_000, "tokenize_seconds": 2.0}],
            "merges": [{"site": "mlp_post/0", "seconds": 0.5}],
            "shards": [{"task_seconds": 10.0, "stream_seconds": 9.0, "open_seconds": 0.5, "start_seconds": 0.2}],
        },
    }
    cost = model.measured_costs(manifest)
    assert cost["tokenize_tokens_per_s_per_core"] == 1.5e6 and cost["merge_s_per_feature"] == 0.5e-3
    assert abs(cost["state_write_s_per_feature"] - 0.3e-3) < 1e-12 and cost["finalize_s_per_feature"] == 2e-3
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    assert model.main(["--manifest", str(tmp_path / "m.json")]) == 0
    (tmp_path / "bad.json").write_text("{}")
    assert model.main(["--manifest", str(tmp_path / "bad.json")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("scaling_model: ")
