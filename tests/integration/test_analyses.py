"""The analyses against a model whose answers are known (tests/helpers/planted.py): each
canned query finds the planted neuron first; regex, minimal examples and logit effects match
what the weights say; the runner skips finished analyses and resumes a killed one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import planted
from indexer.analyses import runner
from indexer.analyses.common import IndexContext, Options, Reads
from indexer.cli import main
from indexer.store.query import run_sql

N = planted.NEURONS


@pytest.fixture(scope="module")
def planted_index(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("planted")
    return planted.index_and_analyze(root, planted.write_model(root / "model"))


def first(index_dir: Path, query: str) -> dict:
    df, _ = run_sql(index_dir, query)
    assert len(df) and {"layer", "neuron", "score", "reason"} <= set(df.columns), df
    return df.iloc[0].to_dict()


@pytest.mark.parametrize("query,planted_neuron", [
    ("trigram-neurons", "trigram"),
    ("base64-neurons", "base64"),
    ("regex-neurons", "digit"),
    ("polysemantic-neurons", "polysemantic"),
    ("illusion-neurons", "illusion"),
    ("dead-neurons", "dead"),
    ("dense-neurons", "dense"),
    ("token-neurons  dog", "token"),
    ("top-neurons-for-token  dog", "token"),
])
def test_each_canned_query_finds_the_planted_neuron_first(planted_index, query, planted_neuron):
    row = first(planted_index, query)
    assert row["neuron"] == N[planted_neuron], row
    if query == "trigram-neurons":
        assert (row["prev_token_str"], row["token_str"]) == (" ice", " cream")


def test_flags_are_exact(planted_index):
    df, _ = run_sql(planted_index, "SELECT neuron, flag FROM flags ORDER BY neuron")
    assert sorted(zip(df.neuron, df.flag)) == sorted([
        (N["dead"], "dead"), (N["dense"], "dense"), (N["polysemantic"], "polysemantic"), (N["illusion"], "illusion"),
    ])


def test_trigram_survivals(planted_index):
    df, _ = run_sql(planted_index, "SELECT * FROM trigram_scores ORDER BY neuron")
    by = df.set_index("neuron")
    assert by.loc[N["trigram"], "prev_survival"] == pytest.approx(0, abs=1e-3)
    assert by.loc[N["trigram"], "current_survival"] == pytest.approx(0, abs=1e-3)
    assert by.loc[N["trigram"], "back_survival"] == pytest.approx(1, abs=1e-3)
    assert by.loc[N["token"], "prev_survival"] == pytest.approx(1, abs=1e-3)  # a token neuron ignores the past
    assert by.loc[N["token"], "current_survival"] == pytest.approx(0, abs=1e-3)


def test_digit_regex_check(planted_index, capsys):
    from indexer.analyses.regex import check

    result = check(planted_index, 0, N["digit"], r"[0-9]+", options=Options(device="cpu", progress=False))
    assert result["f1"] >= 0.9 and result["engine"] == "re2"
    assert main(["regex", str(planted_index), "--layer", "0", "--neuron", str(N["token"]), "--pattern", r"\d+",
                 "--device", "cpu", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["f1"] < 0.1 and printed["false_negatives"] and "[[ dog]]" in printed["false_negatives"][0]["context"]


def test_model_free_regex_check_over_stored_windows(planted_index):
    """``Index.regex_check`` (what the viewer's box calls) agrees on the planted neurons."""
    from indexer.api import Index
    from indexer.safe_regex import RegexError

    with Index.open(planted_index) as ix:
        digit = ix.regex_check(0, N["digit"], r"[0-9]+")
        assert digit["f1"] >= 0.9 and digit["tokens"] > 50 and digit["engine"] == "re2"
        other = ix.regex_check(0, N["token"], r"[0-9]+")
        assert other["f1"] < 0.5
        with pytest.raises(RegexError):
            ix.regex_check(0, N["digit"], "(unclosed")  # runaway patterns: tests/unit/test_safe_regex.py
        with pytest.raises(Exception, match="no neuron"):
            ix.regex_check(0, 10_000, r"x")


def test_minimal_examples_of_the_trigram_neuron_are_ice_cream(planted_index):
    df, _ = run_sql(planted_index, f"SELECT * FROM minimal_examples WHERE neuron = {N['trigram']}")
    assert len(df) == 5 and set(df.text) == {" ice cream"} and set(df.length) == {2} and df.found.all()
    df, _ = run_sql(planted_index, f"SELECT * FROM minimal_summary WHERE neuron = {N['token']}")
    assert df.frac_within_8.iloc[0] == 1.0 and df.median_length.iloc[0] == 1  # ' dog' alone fires


def test_logit_effects_equal_w_out_times_w_u(planted_index):
    by_hand = planted.planted_logit_effects()
    df, _ = run_sql(planted_index, "SELECT * FROM logit_effects ORDER BY neuron, direction, rank", limit=None)
    assert len(df) == 2 * 10 * len(N)
    for (neuron, direction), g in df.groupby(["neuron", "direction"]):
        row = by_hand[neuron]
        expected = np.argsort(-row if direction == "up" else row, kind="stable")[:10]
        assert list(g.token_id) == list(expected)
        np.testing.assert_allclose(g.value, row[expected], rtol=1e-4, atol=1e-5)


def test_rerun_skips_done_analyses_and_force_redoes_them(planted_index):
    report = runner.analyze(planted_index, only="flags,minimal", options=Options(device="cpu", progress=False))
    assert {r["status"] for r in report.values()} == {"skipped"}
    report = runner.analyze(planted_index, only="flags", force=True, options=Options(device="cpu", progress=False))
    assert report["flags"]["status"] == "done"


def test_a_killed_analysis_resumes_from_its_finished_chunks(planted_index, monkeypatch):
    ix = IndexContext(planted_index, Options(device="cpu", progress=False))
    seqs = [np.array([0, 6457])] * 5 + [np.array([0, 8192, 8193])] * 5
    reads = Reads()
    token, trigram = reads.ask(("mlp_post", 0), 0, 5, N["token"]), reads.ask(("mlp_post", 0), 5, 5, N["trigram"])
    calls = []
    real = IndexContext.last_token_acts

    def dies_on_second(self, sequences, wanted, desc):
        calls.append(len(sequences))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, sequences, wanted, desc)

    monkeypatch.setattr(IndexContext, "last_token_acts", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        ix.resumable_last_token_acts("test", seqs, reads, "t", chunk=5)
    monkeypatch.setattr(IndexContext, "last_token_acts", real)
    acts = ix.resumable_last_token_acts("test", seqs, reads, "t", chunk=5)
    assert calls == [5, 5] and Reads.of(acts, token).tolist() == [1.0] * 5 and Reads.of(acts, trigram).tolist() == [2.0] * 5
    ix.close()


def test_analyze_cli(planted_index, capsys):
    assert main(["analyze", str(planted_index), "--only", "regex", "--quiet"]) == 0
    assert "regex: skipped" in capsys.readouterr().out
    assert main(["analyze", str(planted_index), "--only", "nonsense"]) == 1
    assert "--only" in capsys.readouterr().err


def test_site_agreement_on_a_solu_model_matches_brute_force(tiny_solu_dir, tmp_path):
    from helpers.configs import base_config
    from indexer.run.engine import index

    out = tmp_path / "solu"
    index(base_config(str(tiny_solu_dir), str(out), tokens=600, device="cpu"), progress=False)
    runner.analyze(out, only="agreement", options=Options(device="cpu", progress=False))
    sites = [s["name"] for s in json.loads((out / "manifest.json").read_text())["sites"] if s["name"] != "heads"]
    assert len(sites) >= 2  # read from the manifest: whatever the MLP sites are called
    got, _ = run_sql(out, "SELECT * FROM site_agreement", limit=None)
    ex, _ = run_sql(out, "SELECT site, neuron, ctx_id FROM examples WHERE kind = 'top'", limit=None)
    sets = {k: set(g.ctx_id) for k, g in ex.groupby(["site", "neuron"])}
    assert len(got) == len(sets) // len(sites) * len(sites) * (len(sites) - 1) // 2
    for r in got.itertuples():
        a, b = sets[(r.site_a, r.neuron)], sets[(r.site_b, r.neuron)]
        assert r.top_k_overlap == pytest.approx(len(a & b) / max(len(a), len(b)))
    assert first(out, "site-agreement")["score"] == got.top_k_overlap.min()


@pytest.fixture(scope="module", params=["native-ln", "toy-1l"])
def ln_model_spec(request, tmp_path_factory) -> str:
    """A model WITH a final LayerNorm: a tiny random one whose ln_final weight and bias are
    random (not the initial ones/zeros, so the scale folding matters), and the embedded toy-1l."""
    if request.param == "toy-1l":
        return "toy-1l"
    import torch

    from helpers.models import TINY_CONFIG
    from indexer.inputs.models import build_native_bridge, save_native_model

    torch.manual_seed(1)
    bridge = build_native_bridge(TINY_CONFIG)
    with torch.no_grad():
        for name, p in bridge.ln_final.named_parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    return str(save_native_model(tmp_path_factory.mktemp("ln") / "m", TINY_CONFIG, bridge))


def test_folded_logit_effects_match_transformer_lens_processed_weights(ln_model_spec):
    """Ours: raw bridge weights, folded by indexer.analyses.logits. Reference: a second copy of
    the model processed by TransformerLens itself (enable_compatibility_mode: fold_ln,
    center_writing_weights, center_unembed), whose W_out @ W_U is the folded direct effect."""
    import torch

    from indexer.analyses.logits import effects
    from indexer.inputs.models import load_model

    ours_bridge = load_model(ln_model_spec).bridge
    assert ours_bridge.cfg.normalization_type == "LN"
    ref_bridge = load_model(ln_model_spec).bridge
    ref_bridge.enable_compatibility_mode(disable_warnings=True)
    with torch.no_grad():
        for layer in range(ours_bridge.cfg.n_layers):
            ours = effects(ours_bridge, layer)
            ref = ref_bridge.blocks[layer].mlp.W_out.float() @ ref_bridge.W_U.float()
            raw = ours_bridge.blocks[layer].mlp.W_out.float() @ ours_bridge.W_U.float()
            tol = 1e-4 * ref.abs().max().item()
            assert (ours - ref).abs().max().item() < tol
            # the folding is not a no-op on these models: the raw product differs
            raw_c = raw - raw.mean(dim=1, keepdim=True)
            assert (raw_c - ref).abs().max().item() > 100 * tol


def test_folded_logit_effect_is_the_logit_change_of_a_push_along_w_out(ln_model_spec):
    """Empirical, through the real forward pass: add eps * W_out[n] to the final residual
    stream (ln_final.hook_in) at the last position, with ln_final's scale frozen at its
    unperturbed value (ln_final.hook_scale replaced: the norm in 'linear' mode). The change in
    logits, centred over the vocabulary, times scale / eps must equal effect[n] exactly."""
    import torch

    from indexer.analyses.logits import effects
    from indexer.inputs.models import load_model

    model = load_model(ln_model_spec)
    bridge = model.bridge
    tokens = torch.tensor([model.tokenizer.encode(" The dog sat on the table and ate ice cream.")])
    layer = bridge.cfg.n_layers - 1
    eff = effects(bridge, layer)
    w_out = bridge.blocks[layer].mlp.W_out.detach().float()
    eps = 1e-2
    saved = {}

    def keep_scale(scale, hook):
        saved["scale"] = scale.detach().clone()

    def frozen_scale(scale, hook):
        return saved["scale"]

    with torch.no_grad():
        base = bridge.run_with_hooks(tokens, fwd_hooks=[("ln_final.hook_scale", keep_scale)])[0, -1].double()
        s = saved["scale"][0, -1, 0].item()
        for n in (0, 3, 17, eff.shape[0] - 1):
            def push(resid, hook, n=n):
                resid = resid.clone()
                resid[0, -1] += eps * w_out[n]
                return resid

            got = bridge.run_with_hooks(tokens, fwd_hooks=[("ln_final.hook_in", push),
                                                           ("ln_final.hook_scale", frozen_scale)])[0, -1].double()
            delta = got - base
            delta = (delta - delta.mean()) * s / eps
            want = eff[n].double()
            assert torch.corrcoef(torch.stack([delta, want]))[0, 1] > 0.999
            assert (delta - want).abs().max().item() < 2e-2 * want.abs().max().item()
