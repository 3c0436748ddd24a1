"""Where the embedded models, tokenizer and corpora live.

In order: the folder named by ``NEUROSCOPE_DATA`` (for data kept elsewhere, e.g. on a shared
disk), else the ``neuroscope_data`` package that a wheel installs (the repository's ``data/``
folder, mapped in ``pyproject.toml``; an editable install maps it to ``data/`` itself).
"""

from __future__ import annotations

import os
import importlib.util
from pathlib import Path

from indexer.errors import ConfigError


def data_dir() -> Path:
    """The folder holding ``models/``, ``tokenizer/`` and ``corpora/``."""
    override = os.environ.get("NEUROSCOPE_DATA")
    if override:
        path = Path(override).expanduser()
        if not path.is_dir():
            raise ConfigError(f"NEUROSCOPE_DATA={override}: no such folder")
        return path
    spec = importlib.util.find_spec("neuroscope_data")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location, "models").is_dir():
            return Path(location)
    return Path(__file__).resolve().parents[2] / "data"  # a source tree that was never installed


def models_dir() -> Path:
    return data_dir() / "models"


def tokenizer_dir() -> Path:
    return data_dir() / "tokenizer"


def corpora_dir() -> Path:
    return data_dir() / "corpora"
