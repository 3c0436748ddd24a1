"""Shared fixtures: tiny random models written to disk in both supported folder formats."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "data" / "tokenizer"
TINY_CONFIG = dict(
    d_model=32, d_head=8, n_heads=4, n_layers=2, n_ctx=64, d_vocab=8192, d_mlp=64,
    act_fn="gelu", normalization_type="LN", seed=0,
)


def write_native_model(folder: Path, **overrides) -> Path:
    """A random TL-native model in neuroscope's folder format (what data/models/ holds)."""
    from indexer.models import save_native_model

    return save_native_model(folder, {**TINY_CONFIG, **overrides})


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_native_model(tmp_path_factory.mktemp("models") / "tiny-2l")


@pytest.fixture(scope="session")
def tiny_solu_dir(tmp_path_factory) -> Path:
    return write_native_model(tmp_path_factory.mktemp("models") / "tiny-solu", act_fn="solu_ln", n_layers=1)


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory) -> Path:
    """A tiny random GPT-2 written by Hugging Face's save_pretrained."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("models") / "hf-gpt2"
    config = GPT2Config(vocab_size=8192, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(TOKENIZER_DIR)).save_pretrained(folder)
    return folder
