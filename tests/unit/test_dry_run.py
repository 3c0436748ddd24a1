"""`neuroscope index --dry-run`: the plan from a config alone (no weights exist here to load)."""

from __future__ import annotations

from indexer.cli import main


def test_dry_run_plans_from_the_config_only(tmp_path, capsys):
    from transformers import GPT2Config, LlamaConfig

    GPT2Config().save_pretrained(tmp_path / "gpt2")  # config.json only: loading weights would fail
    LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256).save_pretrained(tmp_path / "llama")
    for name, features, layers in (("gpt2", 12 * 3072 + 12 * 12 * 4, 12), ("llama", 32 * 14336 + 32 * 32 * 4, 32)):
        rc = main(["index", "--model", str(tmp_path / name), "--corpus", "no-such-corpus.jsonl",
                   "--out", str(tmp_path / "out"), "--tokens", "65536", "--dry-run"])
        err = capsys.readouterr().err
        assert rc == 0, err
        assert f"{features:,} features in all" in err and f"{layers} layers" in err
        assert "memory estimate" in err and "tokens to read: 65,536" in err
    assert not (tmp_path / "out").exists()  # nothing written, no corpus read


def test_dry_run_of_a_missing_model_is_one_line(tmp_path, capsys):
    rc = main(["index", "--model", str(tmp_path / "nothing"), "--corpus", "code", "--out", str(tmp_path / "o"),
               "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "no model config" in err[0], err


def test_dry_run_counts_sae_latents_and_experts(tmp_path, capsys):
    """An SAE's latents count from its config (its weights file is not read: empty here), and
    a mixture of experts counts every expert's neurons."""
    import json

    from transformers import GPT2Config, MixtralConfig

    GPT2Config().save_pretrained(tmp_path / "gpt2")
    sae = tmp_path / "res8"
    sae.mkdir()
    (sae / "cfg.json").write_text(json.dumps({"architecture": "topk", "d_in": 768, "d_sae": 16384, "k": 32,
                                              "hook_name": "blocks.8.hook_resid_pre"}))
    (sae / "sae_weights.safetensors").write_bytes(b"")
    rc = main(["index", "--model", str(tmp_path / "gpt2"), "--corpus", "code", "--out", str(tmp_path / "o"),
               "--sae", str(sae), "--tokens", "65536", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "sae:res8" in err and "16,384 features" in err and f"{12 * 3072 + 576 + 16384:,} features in all" in err
    MixtralConfig(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2).save_pretrained(tmp_path / "moe")
    rc = main(["index", "--model", str(tmp_path / "moe"), "--corpus", "code", "--out", str(tmp_path / "o"), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"{2 * 8 * 32:,} features" in err and "experts" in err


def test_a_device_map_splits_the_estimate_over_its_devices(tmp_path, capsys):
    from transformers import GPT2Config

    GPT2Config(n_layer=4).save_pretrained(tmp_path / "gpt2")
    split = '{"transformer.wte": "cuda:0", "transformer.h.0": "cuda:0", "transformer.h.1": "cuda:0", ' \
            '"transformer.h.2": "cuda:1", "transformer.h.3": "cuda:1", "transformer.ln_f": "cuda:1"}'
    base = ["index", "--model", str(tmp_path / "gpt2"), "--corpus", "code", "--out", str(tmp_path / "o"), "--dry-run"]
    assert main(base) == 0
    whole = capsys.readouterr().err
    assert main([*base, "--device-map", split]) == 0
    err = capsys.readouterr().err
    assert "split over" not in whole and "split over 2 devices (--device-map)" in err
    from indexer.config import IndexConfig
    from indexer.run.dry_run import dry_run

    cfg = IndexConfig.parse(dict(model=str(tmp_path / "gpt2"), corpus=["code"], out=str(tmp_path / "o"), device_map=split))
    plan = dry_run(cfg)
    assert plan["per_device"] == plan["memory"]["recorders"] // 2
