"""Random directions (``--sites ...,random:K``, indexer.forward.random_sites): the recorded values
are the MLP activations projected on the stored directions (brute force), the directions come
from the seed, a sharded-and-merged run and a killed-and-resumed one equal the single run, and
the analyses, the canned query and the logit effects treat the directions as neurons."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from helpers.brute import recorded, reference, top_k
from helpers.configs import base_config
from helpers.indexes import assert_same_index
from indexer.analyses import runner
from indexer.analyses.common import Options
from indexer.api import Index
from indexer.cli import main
from indexer.forward.random_sites import directions
from indexer.run.engine import index
from indexer.run.merge import merge

K = 8


@pytest.fixture(scope="module")
def cfg(tiny_model_dir, tmp_path_factory):
    return base_config(str(tiny_model_dir), str(tmp_path_factory.mktemp("random") / "idx"), tokens=2000,
                       sites=("mlp_post", f"random:{K}"), store_contexts="all", device="cpu")


@pytest.fixture(scope="module")
def indexed(cfg) -> str:
    index(cfg, progress=False)
    return cfg.out


@pytest.fixture(scope="module")
def stored(indexed) -> dict[int, np.ndarray]:
    with Index.open(indexed) as ix:
        df = ix.sql("SELECT layer, neuron, of_site, direction FROM random_directions ORDER BY layer, neuron")
    assert set(df.of_site) == {"mlp_post"}
    return {int(layer): np.stack([np.asarray(d) for d in g.direction]) for layer, g in df.groupby("layer")}


def test_directions_are_seeded_unit_vectors(cfg, stored):
    from indexer.forward.sites import plan_sites
    from indexer.inputs.models import load_model

    d_mlp = stored[0].shape[1]
    assert sorted(stored) == [0, 1] and all(u.shape == (K, d_mlp) for u in stored.values())
    for layer, u in stored.items():
        np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1, rtol=1e-6)
        assert np.array_equal(u, directions(0, layer, K, d_mlp))  # the site's seed (default 0) alone fixes them
    assert not np.array_equal(stored[0], stored[1])
    info = load_model(cfg.model).info
    again, other = (plan_sites(info, (f"random:{K}:{seed}",))[0].encoder.vectors for seed in (0, 1))
    assert np.array_equal(again, stored[0]) and not np.allclose(other, stored[0])


def test_recorded_values_are_the_activations_projected_on_the_directions(cfg, indexed, stored):
    ref = reference(replace(cfg, sites=("mlp_post",)))
    with Index.open(indexed) as ix:
        neurons = ix.sql("SELECT * FROM neurons WHERE site = 'random' ORDER BY layer, neuron")
        examples = ix.sql("SELECT * FROM examples WHERE site = 'random' AND kind = 'top' ORDER BY layer, neuron, rank")
    assert len(neurons) == 2 * K
    for layer, u in stored.items():
        ref.acts[f"random/{layer}"] = [a.astype(np.float64) @ u.T.astype(np.float64) for a in ref.acts[f"mlp_post/{layer}"]]
        values, _, _ = recorded(ref, f"random/{layer}")
        got = neurons[neurons.layer == layer].set_index("neuron")
        np.testing.assert_array_equal(got.n_tokens, len(values))
        np.testing.assert_allclose(got["max"], values.max(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["min"], values.min(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["mean"], values.mean(axis=0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got["frac_active"], (values > 0).mean(axis=0), atol=2 / len(values))
        by_ctx = dict(zip(ref.ctx_ids, ref.acts[f"random/{layer}"]))
        for i in range(K):
            want = top_k(ref, f"random/{layer}", i, cfg.top_k)
            rows = examples[(examples.layer == layer) & (examples.neuron == i)]
            assert [(c, p) for _, c, p in want] == list(zip(rows.ctx_id, rows.pos))
            np.testing.assert_allclose(rows.activation, [v for v, _, _ in want], rtol=1e-5, atol=1e-6)
            for r in rows.itertuples():  # the windows too
                span = by_ctx[r.ctx_id][r.window_start : r.window_start + len(r.window_acts), i]
                np.testing.assert_allclose(r.window_acts, span, rtol=1e-5, atol=1e-6)


def test_shards_merged_and_a_killed_run_resumed_equal_the_single_run(cfg, indexed, tmp_path):
    shards = [replace(cfg, out=str(tmp_path / f"shard{i}"), shard=(i, 2)) for i in range(2)]
    for shard in shards:
        index(shard, progress=False)
    merge([s.out for s in shards], str(tmp_path / "merged"), progress=False)
    assert_same_index(indexed, str(tmp_path / "merged"))
    killed = replace(cfg, out=str(tmp_path / "killed"), checkpoint_every=2)
    env = {**os.environ, "NEUROSCOPE_TEST_KILL_AT": "batch:5"}
    proc = subprocess.run([sys.executable, "-m", "indexer.cli", "index", "--quiet", *killed.to_argv()], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    index(replace(killed, resume=True), progress=False)
    assert_same_index(indexed, killed.out)


def test_analyses_treat_directions_as_neurons(indexed, stored, tiny_model_dir):
    import torch

    from indexer.analyses.logits import effects
    from indexer.inputs.models import load_model

    runner.analyze(indexed, options=Options(device="cpu", progress=False, top_ranks=2))
    with Index.open(indexed) as ix:
        for view in ("regex_scores", "trigram_scores", "minimal_examples", "token_saliency", "latent_logit_effects"):
            n = ix.sql(f"SELECT count(DISTINCT (layer, neuron)) AS n FROM {view} WHERE site = 'random'")["n"].iloc[0]
            assert n > 0, view
        assert ix.sql("SELECT count(*) AS n FROM site_agreement WHERE site_a = 'random' OR site_b = 'random'")["n"][0] == 0
        logits = ix.sql("SELECT * FROM latent_logit_effects WHERE site = 'random' AND direction = 'up' "
                        "ORDER BY layer, neuron, rank")
        baseline = ix.sql("random-baseline")
    bridge = load_model(str(tiny_model_dir)).bridge
    for layer, u in stored.items():
        with torch.inference_mode():
            eff = (torch.from_numpy(u) @ effects(bridge, layer)).numpy()  # linear: u's effect is u @ the neurons'
        for i in range(K):
            got = logits[(logits.layer == layer) & (logits.neuron == i)]
            np.testing.assert_allclose(got.value, np.sort(eff[i])[::-1][:10], rtol=1e-4, atol=1e-5)
    stats = set(baseline.statistic)
    assert {"dense_share", "median_max_z", "top_token_concentration", "mean_best_specificity",
            "polysemantic_share"} <= stats and len(baseline) == 2 * len(stats)
    assert baseline.score.is_monotonic_decreasing and baseline.neuron.isna().all()
    with Index.open(indexed) as ix:
        dense = ix.sql("SELECT layer, avg(CASE WHEN frac_active >= 0.5 THEN 1.0 ELSE 0.0 END) AS d FROM neurons "
                       "WHERE site = 'random' GROUP BY layer ORDER BY layer")
    got = baseline[baseline.statistic == "dense_share"].sort_values("layer")
    assert got.random.tolist() == pytest.approx(dense.d.tolist())


@pytest.mark.parametrize("sites,message", [
    ("mlp_post,random:0", "random:K[:SEED] with K a whole number"),
    ("random:x", "random:K[:SEED] with K a whole number"),
    ("random", "random:K[:SEED] with K a whole number"),
    ("random:4:x", "random:K[:SEED] with K a whole number"),
    ("random:4,random:8", "name random:K once"),
])
def test_bad_random_sites_are_one_line(sites, message, tmp_path, capsys):
    assert main(["index", "--model", "toy-1l", "--corpus", "code", "--tokens", "100", "--sites", sites,
                 "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_an_attention_only_model_has_no_random_directions(tmp_path, capsys):
    assert main(["index", "--model", "toy-attn-2l", "--corpus", "code", "--tokens", "100", "--sites", "heads,random:4",
                 "--out", str(tmp_path / "x"), "--quiet"]) == 1
    assert "no MLPs" in capsys.readouterr().err
