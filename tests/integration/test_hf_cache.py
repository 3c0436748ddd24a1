"""Hub names offline: read from a local Hugging Face cache laid out as huggingface_hub does
(blobs, snapshot symlinks, refs/main); only a name missing from it is refused, in one line
that names the cache folder."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import torch

from indexer import cli
from indexer.errors import ModelSpecError
from indexer.inputs.models import load_model

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hf_home(tmp_path, hf_model_dir, monkeypatch):
    """HF_HOME holding someorg/tiny-gpt2 (the tiny GPT-2 of conftest) in hub-cache layout."""
    repo = tmp_path / "hf" / "hub" / "models--someorg--tiny-gpt2"
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in hf_model_dir.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def test_the_layout_is_what_transformers_reads(hf_home):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained("someorg/tiny-gpt2", cache_dir=str(hf_home / "hub"),
                                                 local_files_only=True)
    assert model.config.n_embd == 32


def test_a_cached_hub_name_loads_offline(hf_home, hf_model_dir):
    model = load_model("someorg/tiny-gpt2")
    assert model.info.source == "hf-cache" and model.info.d_mlp == 128
    folder = load_model(str(hf_model_dir))  # the same weights from the folder they were written to
    tokens = torch.tensor([[0, 5, 6, 7]])
    with torch.inference_mode():
        assert torch.equal(model.bridge(tokens), folder.bridge(tokens))


def test_a_cached_hub_name_indexes_from_the_command_line(hf_home, tmp_path):
    out = tmp_path / "idx"
    assert cli.main(["index", "--model", "someorg/tiny-gpt2", "--corpus", "code", "--out", str(out),
                     "--tokens", "300", "--ctx-len", "32", "--sites", "mlp_post", "--quiet"]) == 0
    assert (out / "manifest.json").is_file()


def test_a_name_missing_from_the_cache_names_the_cache_folder(hf_home, capsys):
    with pytest.raises(ModelSpecError, match=str(hf_home / "hub")):
        load_model("someorg/not-downloaded")
    assert cli.main(["index", "--model", "someorg/not-downloaded", "--corpus", "code", "--out", "x", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "someorg/not-downloaded" in err and str(hf_home / "hub") in err
