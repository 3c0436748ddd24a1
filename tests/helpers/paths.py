"""Where the tests find the repository and the embedded data."""

from __future__ import annotations

from pathlib import Path

from indexer.inputs.data import tokenizer_dir

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = tokenizer_dir()
