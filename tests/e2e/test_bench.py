"""`neuroscope bench` runs end to end and reports every figure DESIGN.md asks for.

No timing is asserted here (figures are ratios measured by the bench itself, quoted in the
README); this only keeps the bench working.
"""

from __future__ import annotations

import json

from indexer.run.bench import bench


def test_bench_reports_ratios_and_memory(tiny_model_dir):
    result = bench(str(tiny_model_dir), tokens=1500, batch_size=4)
    for sites in ("mlp", "mlp+heads"):
        figures = result[sites]
        assert set(figures["tokens_per_s"]) == {"forward", "stream", "job", "naive"}
        assert all(v > 0 for v in figures["tokens_per_s"].values())
        assert figures["vs_forward"] > 0 and figures["vs_naive"] > 0
        for part in ("job", "stream"):
            assert figures[part]["vs_forward"] > 0 and figures[part]["vs_naive"] > 0
        phases = figures["job"]["phases_s"]
        assert {"stream", "examples", "windows", "write", "total"} <= set(phases)
        assert phases["total"] >= phases["stream"] > 0
        assert figures["job"]["vs_forward"] <= figures["stream"]["vs_forward"] * 1.5  # the job includes the stream
    small, large = result["peak_rss_mb"].values()
    assert small > 100 and large > 100
    assert result["peak_rss_growth"] == round(large / small - 1, 4)


def test_bench_cli_times_only_the_chosen_configuration(tiny_model_dir, capsys):
    from indexer.cli import main

    args = ["bench", "--model", str(tiny_model_dir), "--tokens", "800", "--batch-size", "4",
            "--config", "mlp", "--rounds", "1", "--no-memory", "--no-naive"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rounds"] == 1 and "mlp" in result
    assert "mlp+heads" not in result and "peak_rss_mb" not in result
    assert result["mlp"]["job"]["phases_s"]["total"] > 0
    assert set(result["mlp"]["tokens_per_s"]) == {"forward", "stream", "job"}  # --no-naive: no naive pass
    assert "vs_naive" not in result["mlp"] and "vs_naive" not in result["mlp"]["job"]


def test_bench_cli_refuses_zero_rounds(tiny_model_dir, capsys):
    from indexer.cli import main

    assert main(["bench", "--model", str(tiny_model_dir), "--rounds", "0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rounds" in err[0]
