"""What ``--resume`` starts from: the newest good checkpoint of the output folder (or nothing,
if the run stopped before its first), its index format version, and its config, which the
options given now must agree with except those in ``RESUME_FREE``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from indexer.config import IndexConfig
from indexer.errors import ConfigError, IndexDirError
from indexer.run.checkpoint import read_checkpoint, read_extra
from indexer.run.outdir import meaningful_entries
from indexer.store.manifest import FORMAT_VERSION, MANIFEST

RESUME_FREE = {"resume", "overwrite", "checkpoint_every", "checkpoint_minutes", "device", "device_map", "allow_large"}


def resume_checkpoint(cfg: IndexConfig) -> bytes | None:
    """The newest good checkpoint's payload; None (start afresh) if the run was killed before
    its first checkpoint and left nothing but a lock or temporary files."""
    out = Path(cfg.out).expanduser()
    checkpoint = read_checkpoint(out, warn=lambda m: print(f"neuroscope: {m}", file=sys.stderr))
    if checkpoint is not None:
        version = read_extra(checkpoint, "format_version") if _has_extra(checkpoint, "format_version") else FORMAT_VERSION
        if version != FORMAT_VERSION:
            raise IndexDirError(f"--resume: the checkpoint in {cfg.out} was written by index format version {version}; "
                                f"this neuroscope writes version {FORMAT_VERSION}: start again with --overwrite")
        return checkpoint
    if (out / MANIFEST).is_file():
        raise IndexDirError(f"--resume: the index in {cfg.out} is already complete; nothing to resume")
    if out.is_dir() and not meaningful_entries(out):
        print(f"neuroscope: --resume: {cfg.out} holds no checkpoint yet (the run stopped before its first one); "
              "starting from the beginning", file=sys.stderr)
        return None
    raise IndexDirError(f"--resume: no checkpoint in {cfg.out} (nothing to resume; drop --resume to start)")


def resumed_config(cfg: IndexConfig, checkpoint: bytes) -> IndexConfig:
    """The checkpoint's config; options given now must agree with it."""
    saved = IndexConfig.from_dict(read_extra(checkpoint, "config"))
    defaults = IndexConfig().to_dict()
    given = cfg.to_dict()
    clashes = [
        k for k, v in given.items()
        if k not in RESUME_FREE | {"out"} and v != defaults[k] and v != saved.to_dict()[k]
    ]
    if clashes:
        raise ConfigError(f"--resume: options differ from the checkpointed run: {', '.join(clashes)}")
    for key in RESUME_FREE:
        setattr(saved, key, getattr(cfg, key))
    saved.out = cfg.out
    return saved


def _has_extra(checkpoint: bytes, key: str) -> bool:
    import io

    with np.load(io.BytesIO(checkpoint)) as npz:
        return key in npz.files
