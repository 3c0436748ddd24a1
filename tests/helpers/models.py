"""Tiny random models written to disk, in neuroscope's folder format."""

from __future__ import annotations

from pathlib import Path

TINY_CONFIG = dict(
    d_model=32, d_head=8, n_heads=4, n_layers=2, n_ctx=64, d_vocab=8192, d_mlp=64,
    act_fn="gelu", normalization_type="LN", seed=0,
)


def write_native_model(folder: Path, **overrides) -> Path:
    """A random TL-native model in neuroscope's folder format (what data/models/ holds)."""
    from indexer.inputs.models import save_native_model

    return save_native_model(folder, {**TINY_CONFIG, **overrides})
