"""The configuration of one indexing run.

Each field's ``help`` is also its command-line help, and the resolved config is written into
``manifest.json``, so a run can always be reproduced from its index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from indexer.errors import ConfigError

SITES = ("mlp_post", "mlp_pre_ln", "heads")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class IndexConfig:
    """A run of `neuroscope index`."""

    model: str = _opt("", "model: an embedded name, a local folder, a TransformerLens alias or a HF id")
    corpus: list[str] = _opt([], "[NAME=]SPEC: embedded name, .jsonl/.json/.parquet/.txt file or hf:OWNER/NAME[:split]; repeatable")
    out: str = _opt("", "index directory to write")
    tokens: int | None = _opt(None, "stop after this many text tokens (BOS excluded), split evenly across corpora")
    ctx_len: int | None = _opt(None, "tokens per context as the model sees them, BOS included (default: model context, at most 1024)")
    batch_size: int = _opt(8, "contexts per forward pass")
    top_k: int = _opt(20, "top examples kept per feature (at most one per context)")
    quantiles: str = _opt("0.5,0.9,0.99,0.999", "quantile edges of the sampling bins")
    per_bin: int = _opt(5, "random examples kept per quantile bin")
    warmup_tokens: int = _opt(16384, "tokens from the start of the stream used to estimate the quantile edges")
    sites: str = _opt("all", "comma list of sites: mlp_post, mlp_pre_ln (SoLU models), heads; or 'all'")
    layers: str = _opt("all", "comma list of layers to index, or 'all'")
    window_before: int = _opt(48, "tokens kept before each example's position")
    window_after: int = _opt(8, "tokens kept after each example's position")
    device: str = _opt("auto", "auto, cpu or cuda")
    dtype: str = _opt("float32", "float32 or bfloat16 (bf16 autocast: ~2x faster on recent CPUs)")
    seed: int = _opt(0, "seed of the random example sampling")
    store_contexts: str = _opt("kept", "kept: only contexts some example uses; all: every context")
    skip_bad_records: bool = _opt(False, "skip malformed corpus records (and report how many) instead of failing")
    checkpoint_every: int = _opt(50, "batches between checkpoints")
    resume: bool = _opt(False, "continue from the checkpoint in --out")
    overwrite: bool = _opt(False, "delete what is in --out first")
    shard: str = _opt("0/1", "I/N: index only contexts with ctx_id % N == I (combine with `neuroscope merge`)")
    dask: str | None = _opt(None, "local[:N] or tcp://HOST:PORT: spread shards over a Dask cluster")

    def quantile_list(self) -> list[float]:
        try:
            values = [float(q) for q in self.quantiles.split(",") if q.strip()]
        except ValueError:
            raise ConfigError(f"--quantiles {self.quantiles!r}: expected numbers like 0.5,0.9,0.99") from None
        if not values or any(not 0 < q < 1 for q in values) or values != sorted(set(values)):
            raise ConfigError(f"--quantiles {self.quantiles!r}: expected increasing values strictly between 0 and 1")
        return values

    def shard_pair(self) -> tuple[int, int]:
        try:
            i, n = (int(x) for x in self.shard.split("/"))
        except ValueError:
            raise ConfigError(f"--shard {self.shard!r}: expected I/N, e.g. 0/4") from None
        if not (n >= 1 and 0 <= i < n):
            raise ConfigError(f"--shard {self.shard!r}: need 0 <= I < N")
        return i, n

    def validate(self) -> None:
        """Checks that need no model; the engine checks the rest against the model."""
        for name in ("batch_size", "top_k", "per_bin", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.window_before < 1 or self.window_after < 0:
            raise ConfigError("--window-before must be at least 1 and --window-after at least 0")
        if self.tokens is not None and self.tokens < 1:
            raise ConfigError("--tokens must be at least 1")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"--dtype {self.dtype!r}: expected float32 or bfloat16")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device {self.device!r}: expected auto, cpu or cuda")
        if self.store_contexts not in ("kept", "all"):
            raise ConfigError(f"--store-contexts {self.store_contexts!r}: expected kept or all")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other")
        if not self.corpus:
            raise ConfigError("give at least one --corpus")
        self.quantile_list()
        self.shard_pair()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IndexConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
