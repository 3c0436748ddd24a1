"""Small run configs shared by the integration and end-to-end tests."""

from __future__ import annotations

from dataclasses import replace

from indexer.config import IndexConfig


def base_config(model: str, out: str, **overrides) -> IndexConfig:
    cfg = IndexConfig(
        model=model, corpus=["code", "prose"], out=out, tokens=2500, ctx_len=32, batch_size=4,
        top_k=5, per_bin=3, quantiles=(0.5, 0.9, 0.99), checkpoint_every=2,
        window_before=6, window_after=2,
    )
    return replace(cfg, **overrides)
