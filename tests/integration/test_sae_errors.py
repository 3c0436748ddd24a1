"""A bad `--sae` is one clear line on stderr and exit status 1, before any indexing."""

from __future__ import annotations

import json

import pytest

from helpers.saes import write_saelens, write_sparsify
from indexer.cli import main


def _index(tiny_model_dir, out, sae: str) -> list[str]:
    return ["index", "--model", str(tiny_model_dir), "--corpus", "code", "--out", str(out), "--tokens", "200",
            "--ctx-len", "16", "--sites", "mlp_post", "--quiet", "--sae", sae]


def _bad_arch(folder):
    write_saelens(folder, "standard", "blocks.0.hook_resid_pre", 32, 16)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "temporal"}))
    return folder


def _bad_weights(folder):
    write_saelens(folder, "standard", "blocks.0.hook_resid_pre", 32, 16)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 20}))
    return folder


CASES = {
    "wrong width": (lambda f: write_saelens(f, "standard", "blocks.0.hook_resid_pre", 48, 16),
                    "hook blocks.0.hook_resid_pre carries 32 values per token but the SAE's d_in is 48"),
    "weights do not fit cfg.json": (_bad_weights, "W_enc has shape [32, 16] but cfg.json gives [32, 20]"),
    "unknown architecture": (_bad_arch, "unknown SAE architecture 'temporal'"),
    "missing hook": (lambda f: write_saelens(f, "standard", "blocks.0.hook_resid_nowhere", 32, 16),
                     "the model has no hook 'blocks.0.hook_resid_nowhere'"),
    "layer the model lacks": (lambda f: write_saelens(f, "standard", "blocks.7.hook_resid_pre", 32, 16),
                              "the model has no hook 'blocks.7.hook_resid_pre'"),
    "sparsify hookpoint": (lambda f: write_sparsify(f.parent / "embed_tokens", 32, 64, 4),
                           "sparsify hookpoint 'embed_tokens' (the folder name) is not a block"),
    "no such folder": (lambda f: f / "absent", "no such folder"),
    "no weights": (lambda f: (f.mkdir(), (f / "cfg.json").write_text("{}"), f)[-1], "no sae_weights.safetensors"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_sae_is_one_line(tiny_model_dir, tmp_path, capsys, case):
    make, message = CASES[case]
    folder = make(tmp_path / "bad")
    out = tmp_path / "ix"
    assert main(_index(tiny_model_dir, out, f"bad={folder}")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neuroscope: error: "), err
    assert message in err[0], err[0]
    assert not (out / "manifest.json").exists() and not (out / "checkpoint.npz").exists()
