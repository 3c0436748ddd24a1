"""The local Hugging Face cache: where a hub model downloaded beforehand lives, for offline runs.

``huggingface_hub`` lays a model out as ``HUB/models--OWNER--NAME/snapshots/REVISION/`` with
``refs/main`` holding the revision ``main`` points at, where ``HUB`` is ``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``. Read here from the environment at call
time (``huggingface_hub`` fixes its constants when first imported), so a cache named after
start-up, as in tests, is honoured too.
"""

from __future__ import annotations

import os
from pathlib import Path


def hub_cache_dir() -> Path:
    """The folder ``huggingface_hub`` keeps downloaded repositories in.

    >>> os.environ["HF_HUB_CACHE"] = "/tmp/x"; str(hub_cache_dir()); del os.environ["HF_HUB_CACHE"]
    '/tmp/x'
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def cached_snapshot(repo_id: str, revision: str = "main") -> Path | None:
    """The snapshot folder of a cached model (one holding config.json), else None.

    ``revision`` is a branch name (read from ``refs/``) or a commit hash (a snapshot's name)."""
    repo = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    return snapshot if (snapshot / "config.json").is_file() else None
