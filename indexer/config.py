"""The configuration of one indexing run, typed.

Options that are lists or choices arrive as text (the command line) or JSON (a manifest or a
checkpoint) and are parsed once, at that edge, by ``IndexConfig.parse``; inside the program
they are tuples and ``Literal`` values. Each field's ``help`` is also its command-line help,
and the resolved config is written into ``manifest.json``, so a run can always be reproduced
from its index.

Layer rule: imports only ``indexer.errors``.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Literal, get_args

from indexer.errors import ConfigError

SiteName = Literal["mlp_post", "mlp_pre", "mlp_mid", "mlp_gate", "mlp_up", "experts", "heads"]
SITES: tuple[str, ...] = get_args(SiteName)
DEPRECATED_SITES = {"mlp_pre_ln": "mlp_mid"}  # old name -> the name the field uses
# ``random:K[:SEED]`` in --sites: K seeded random unit directions of RANDOM_OF's activation space,
# recorded in the same pass as site RANDOM_SITE (indexer.forward.random_sites).
RANDOM_SITE = "random"
RANDOM_OF = "mlp_post"
MAX_RANDOM = 65536
Order = Literal["shuffle", "file"]
DType = Literal["float32", "bfloat16"]
StoreContexts = Literal["kept", "all"]


def parse_quantiles(text: str) -> tuple[float, ...]:
    """'0.5,0.9' -> (0.5, 0.9): increasing values strictly between 0 and 1.

    >>> parse_quantiles("0.5, 0.9,0.99")
    (0.5, 0.9, 0.99)
    """
    try:
        values = tuple(float(q) for q in str(text).split(",") if q.strip())
    except ValueError:
        raise ConfigError(f"--quantiles {text!r}: expected numbers like 0.5,0.9,0.99") from None
    if not values or any(not 0 < q < 1 for q in values) or list(values) != sorted(set(values)):
        raise ConfigError(f"--quantiles {text!r}: expected increasing values strictly between 0 and 1")
    return values


def parse_sites(text: str) -> tuple[str, ...] | None:
    """'all' -> None (every site of the model); 'heads,mlp_post' -> ('heads', 'mlp_post');
    ``random:K[:SEED]`` asks for K random directions of mlp_post's space (``random_spec``).

    >>> parse_sites("all") is None, parse_sites("mlp_post, heads,random:8")
    (True, ('mlp_post', 'heads', 'random:8'))
    """
    if str(text).strip() == "all":
        return None
    names = tuple(dict.fromkeys(canonical_site(s.strip()) for s in str(text).split(",") if s.strip()))
    if not names:
        raise ConfigError(f"--sites {text!r}: name at least one site ({', '.join(SITES)}) or 'all'")
    unknown = [n for n in names if n not in SITES and random_spec(n) is None]
    if unknown:
        raise ConfigError(f"--sites: unknown {', '.join(unknown)}; expected {', '.join(SITES)}, {RANDOM_SITE}:K[:SEED] "
                          "or 'all'")
    if sum(random_spec(n) is not None for n in names) > 1:
        raise ConfigError(f"--sites {text!r}: name {RANDOM_SITE}:K once")
    return names


def random_spec(name: str) -> tuple[int, int] | None:
    """(K, seed) for a site spelled ``random:K`` or ``random:K:SEED`` (K random unit directions of
    mlp_post's space, drawn with SEED, default 0; recorded as site ``random``), None for any other
    name; ConfigError for a bad K or seed.

    >>> random_spec("random:64"), random_spec("random:64:7"), random_spec("mlp_post")
    ((64, 0), (64, 7), None)
    """
    head, sep, rest = str(name).partition(":")
    if head != RANDOM_SITE:
        return None
    k, _, seed = rest.partition(":")
    if not sep or not k.isdigit() or not 1 <= int(k) <= MAX_RANDOM or not (seed.isdigit() or seed == ""):
        raise ConfigError(f"--sites {name}: expected {RANDOM_SITE}:K[:SEED] with K a whole number from 1 to {MAX_RANDOM} "
                          f"(K random directions of {RANDOM_OF}'s space, drawn with SEED, default 0)")
    return int(k), int(seed or 0)


def canonical_site(name: str) -> str:
    """A site's current name; an old name is mapped, with a one-line deprecation note on stderr.

    >>> canonical_site("mlp_post")
    'mlp_post'
    """
    new = DEPRECATED_SITES.get(name)
    if new is None:
        return name
    print(f"neuroscope: warning: site {name!r} is deprecated; it is now called {new!r}", file=sys.stderr)
    return new


def parse_order(text: str) -> str:
    """'shuffle' or 'file': the order documents are read in when a token budget applies.

    >>> parse_order("file")
    'file'
    """
    return _choice("order", get_args(Order))(str(text).strip())


def parse_layers(text: str) -> tuple[int, ...] | None:
    """'all' -> None; '1,0' -> (0, 1)."""
    if str(text).strip() == "all":
        return None
    try:
        layers = tuple(sorted({int(x) for x in str(text).split(",") if x.strip()}))
    except ValueError:
        raise ConfigError(f"--layers {text!r}: expected a comma list of integers or 'all'") from None
    if not layers or min(layers) < 0:
        raise ConfigError(f"--layers {text!r}: expected non-negative layer numbers or 'all'")
    return layers


def parse_shard(text: str) -> tuple[int, int]:
    """'1/4' -> (1, 4), with 0 <= I < N."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(text: str) -> str | dict[str, Any]:
    """``--device-map``: one of Hugging Face's named strategies, or a JSON object {module: device}."""
    if text in DEVICE_MAPS:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not value or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"--device-map {text!r}: expected {', '.join(DEVICE_MAPS)} or a JSON object of module -> device")
    return value


def _choice(name: str, allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ConfigError(f"--{name} {text!r}: expected {' or '.join(allowed)}")
        return text

    return parse


def _opt(default: Any, help: str, parse: Callable[[str], Any] | None = None, cli: str | None = None) -> Any:
    """A config field: its default, its help (also the CLI help), and the parser of its text form."""
    meta = {"help": help, "parse": parse, "cli": cli}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class IndexConfig:
    """A run of `neuroscope index`."""

    model: str = _opt("", "model: an embedded name, a local folder, a TransformerLens alias or a HF id")
    corpus: list[str] = _opt([], "[NAME=]SPEC: embedded name, .jsonl/.json/.parquet/.txt file, hf:OWNER/NAME[:split] (the local HF cache when HF_HUB_OFFLINE=1) or hf:/path/to/dataset_dir[:split]; rows with a 'tokens' column (lists of token ids) are indexed as given, untokenized; repeatable")
    out: str = _opt("", "index directory to write")
    tokens: int | None = _opt(None, "stop after this many text tokens (BOS excluded), split evenly across corpora")
    ctx_len: int | None = _opt(None, "tokens per context as the model sees them, BOS included (default: model context, at most 1024)")
    batch_size: int = _opt(8, "contexts per forward pass")
    top_k: int = _opt(20, "top examples kept per feature (at most one per context)")
    quantiles: tuple[float, ...] = _opt((0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999), "quantile edges of the sampling bins, over all tokens indexed", parse_quantiles, "0.25,0.5,0.75,0.9,0.95,0.99,0.999")
    per_bin: int = _opt(5, "random examples kept per quantile bin")
    sites: tuple[SiteName, ...] | None = _opt(None, "comma list of sites: mlp_post (neuron activations), mlp_pre (input of the activation function), mlp_mid (SoLU models: after SoLU, before its LayerNorm; formerly mlp_pre_ln), mlp_gate and mlp_up (gated MLPs: the gate projection before its activation, the up projection; mlp_post is act(gate) * up), heads, random:K[:SEED] (K random unit directions of mlp_post's space drawn with SEED, default 0, site 'random': a baseline for the neurons); or 'all' (default: mlp_pre, mlp_mid, mlp_post and heads for SoLU models, mlp_post and heads for others)", parse_sites, "all")
    layers: tuple[int, ...] | None = _opt(None, "comma list of layers to index, or 'all'", parse_layers, "all")
    window_before: int = _opt(48, "tokens kept before each example's position")
    window_after: int = _opt(8, "tokens kept after each example's position")
    window_pool: str = _opt("auto", "entries per quantile sample of the pool of sample windows captured while streaming "
                            "(finalize runs the model again over the contexts of the samples the pool missed): a number "
                            "from 0 to 32, or auto: 2.7 (the compact state), grown up to 6 where the whole estimate "
                            "stays under half the memory available (on the CPU; 2.7 on an accelerator)")
    device: str = _opt("auto", "auto, cpu or cuda[:N]")
    device_map: str = _opt("", "split a Hugging Face model over devices (its device_map): auto, balanced, "
                           "balanced_low_0, sequential, or a JSON object of module -> device; each layer's "
                           "recorders then live on its layer's device (--device is ignored)")
    dtype: DType = _opt("float32", "float32 or bfloat16 (bf16 weights and autocast: half the weights' memory, ~2x faster on recent CPUs and GPUs)", _choice("dtype", get_args(DType)))
    seed: int = _opt(0, "seed of the random example sampling")
    store_contexts: StoreContexts = _opt("kept", "kept: only contexts some example uses; all: every context", _choice("store-contexts", get_args(StoreContexts)))
    skip_bad_records: bool = _opt(False, "skip malformed corpus records (and report how many) instead of failing")
    checkpoint_every: int = _opt(1000, "batches between checkpoints (also see --checkpoint-minutes)")
    checkpoint_minutes: float = _opt(5.0, "also checkpoint when this many minutes have passed since the last checkpoint (a checkpoint holds every recorder state: ~100 MB for a 1k-neuron model)")
    resume: bool = _opt(False, "continue from the checkpoint in --out")
    overwrite: bool = _opt(False, "delete the index in --out first (only an index: its manifest or checkpoint must be there)")
    shard: tuple[int, int] = _opt((0, 1), "I/N: index only contexts with ctx_id % N == I (combine with `neuroscope merge`)", parse_shard, "0/1")
    dask: str | None = _opt(None, "local[:N] or tcp://HOST:PORT: spread shards over a Dask cluster")
    dask_shards: int | None = _opt(None, "shards of a --dask job, handed out as workers free up (default: 4 per worker present at the start, but none under 1M tokens, 64M on GPUs; each shard adds one write and one merge of the recorder state)")
    order: Order = _opt("shuffle", "with --tokens: shuffle reads documents in a seeded random order spread over the whole corpus (hf: streams through a seeded shuffle buffer); file reads them in file order", parse_order, "shuffle")
    tokens_bos: str = _opt("auto", "pre-tokenized corpora (a 'tokens' column): auto prepends BOS to a row only if it lacks it; always; never", _choice("tokens-bos", ("auto", "always", "never")), "auto")
    sae: list[str] = _opt([], "[NAME=]PATH: an SAE or transcoder folder (SAELens cfg.json + sae_weights.safetensors, or sparsify cfg.json + sae.safetensors) or an embedded SAE name, whose latents are indexed as site sae:NAME (NAME defaults to the folder's name); repeatable")
    allow_large: bool = _opt(False, "run even if the memory estimate printed at start-up exceeds the memory available")

    @classmethod
    def parse(cls, values: dict[str, Any]) -> "IndexConfig":
        """A config from text (command line) or JSON values (manifest, checkpoint): the edge
        where list and choice options are parsed; unknown keys are ignored."""
        known = {f.name: f for f in fields(cls)}
        typed = {}
        for name, value in values.items():
            if name not in known:
                continue
            parse = known[name].metadata["parse"]
            if parse is not None and isinstance(value, str):
                value = parse(value)
            elif isinstance(value, list) and name not in ("corpus", "sae"):
                value = tuple(value)
            typed[name] = value
        return cls(**typed)

    def validate(self) -> None:
        """Checks that need no model; the engine checks the rest against the model."""
        for name in ("batch_size", "top_k", "per_bin", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if not (math.isfinite(self.checkpoint_minutes) and self.checkpoint_minutes > 0):
            raise ConfigError("--checkpoint-minutes must be a positive number")
        if self.window_before < 1 or self.window_after < 0:
            raise ConfigError("--window-before must be at least 1 and --window-after at least 0")
        if self.window_pool != "auto":
            try:
                pool = float(self.window_pool)
            except (TypeError, ValueError):
                pool = math.nan
            if not 0 <= pool <= 32:
                raise ConfigError(f"--window-pool {self.window_pool!r}: expected auto or a number from 0 to 32")
        if self.dask_shards is not None and (self.dask_shards < 1 or not self.dask):
            raise ConfigError("--dask-shards must be at least 1, with --dask")
        if self.tokens is not None and self.tokens < 1:
            raise ConfigError("--tokens must be at least 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device {self.device!r}: expected auto, cpu or cuda")
        if self.device_map:
            parse_device_map(self.device_map)
            if self.dask:
                raise ConfigError("--device-map with --dask: each worker loads the model on its own device")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other")
        if not self.corpus:
            raise ConfigError("give at least one --corpus")
        if any(not (isinstance(q, float) and math.isfinite(q)) for q in self.quantiles):
            raise ConfigError(f"--quantiles {self.quantiles!r}: expected numbers")
        parse_quantiles(",".join(map(str, self.quantiles)))
        parse_shard("/".join(map(str, self.shard)))
        _choice("dtype", get_args(DType))(self.dtype)
        _choice("store-contexts", get_args(StoreContexts))(self.store_contexts)
        parse_order(self.order)
        _choice("tokens-bos", ("auto", "always", "never"))(self.tokens_bos)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values (tuples become lists); ``parse`` reads them back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IndexConfig":
        return cls.parse(data)

    def to_argv(self) -> list[str]:
        """The `neuroscope index` options that give this config (defaults left out).

        >>> IndexConfig(model="toy-1l", corpus=["code"], quantiles=(0.5, 0.9), shard=(1, 2)).to_argv()
        ['--model', 'toy-1l', '--corpus', 'code', '--quantiles', '0.5,0.9', '--shard', '1/2']
        """
        argv: list[str] = []
        default = IndexConfig()
        for f in fields(self):
            value = getattr(self, f.name)
            if value == getattr(default, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                argv += [flag] if value else []
            elif f.name in ("corpus", "sae"):
                for item in value:
                    argv += [flag, item]
            elif f.name == "shard":
                argv += [flag, f"{value[0]}/{value[1]}"]
            elif isinstance(value, tuple):
                argv += [flag, ",".join(map(str, value))]
            else:
                argv += [flag, str(value)]
        return argv
