"""Shared fixtures: tiny random models written to disk in both supported folder formats.

Test tiers are folders: ``unit/`` (no model loaded, seconds), ``integration/`` (tiny and
embedded models against brute force), ``e2e/`` (the CLI in subprocesses, the browser).
Shared helpers live in ``helpers/``; test files never import each other."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers.models import write_native_model  # noqa: E402
from helpers.paths import TOKENIZER_DIR  # noqa: E402


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


@pytest.fixture(scope="session")
def viewer_index(tmp_path_factory) -> Path:
    """A real toy-1l index (code, prose and a corpus of HTML/script/Markdown) for the viewer tests."""
    from helpers.viewer import build_viewer_index

    return build_viewer_index(tmp_path_factory.mktemp("viewer"))
