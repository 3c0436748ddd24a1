"""Model specs: an embedded name, a local folder, or a hub name -> a TransformerBridge.

Three kinds of spec, tried in this order:

- an embedded model under ``data/models/NAME`` (``bridge_config.json`` + ``model.safetensors``
  + tokenizer files), built with ``TransformerBridge.boot_native``;
- a local folder: either the embedded format above, or a Hugging Face folder
  (``config.json`` + weights + tokenizer files, e.g. written by ``save_pretrained``),
  loaded offline with ``TransformerBridge.boot_transformers``;
- a hub name: a TransformerLens alias (``gelu-1l``) or a Hugging Face id (``owner/name``).
  Offline (``HF_HUB_OFFLINE=1``) it is read from the local Hugging Face cache, as
  ``transformers`` does (``hf_cache.py``); only a name missing there is refused, with a
  message naming the cache folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from indexer.errors import ModelSpecError, hub_offline, one_line
from indexer.inputs.data import models_dir, tokenizer_dir
from indexer.inputs.hf_cache import cached_snapshot, hub_cache_dir

NATIVE_CONFIG = "bridge_config.json"
NATIVE_WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class ModelInfo:
    """What the indexer needs to know about a model's shape.

    Attributes:
        name: the spec the model was loaded from.
        source: 'embedded', 'local-native', 'local-hf', 'hf-cache' or 'hub'.
        n_layers, d_model, d_mlp, n_heads, d_head, n_ctx, d_vocab: the architecture.
        act_fn: the MLP activation ('gelu', 'solu_ln', ...).
        bos_token_id: the token put at position 0 of every context.
        attn_only: the model has no MLPs (only the ``heads`` site exists).
        gated: the MLP is gated, act(gate) × up (the ``mlp_gate`` and ``mlp_up`` sites exist).
        n_experts, experts_per_token: a mixture-of-experts MLP (0 for a dense one); d_mlp is
            then the width of one expert.
    """

    name: str
    source: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    n_ctx: int
    d_vocab: int
    act_fn: str
    bos_token_id: int
    attn_only: bool = False
    gated: bool = False
    n_experts: int = 0
    experts_per_token: int = 0

    @property
    def is_solu(self) -> bool:
        return self.act_fn.startswith("solu")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    """A bridge in eval mode, its tokenizer, and its shape."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    info: ModelInfo


def embedded_names() -> list[str]:
    """Names of the models shipped under data/models/."""
    if not models_dir().is_dir():
        return []
    return sorted(p.name for p in models_dir().iterdir() if (p / NATIVE_CONFIG).is_file())


def build_native_bridge(config: dict[str, Any], device: str = "cpu", dtype: Any = None) -> Any:
    """A randomly initialised TL-native bridge from a TransformerBridgeConfig dict."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(**config)
    return TransformerBridge.boot_native(cfg, device=device, dtype=dtype)


def save_native_model(folder: Path, config: dict[str, Any], bridge: Any = None) -> Path:
    """Write a model in neuroscope's folder format (a random one if ``bridge`` is None),
    with the embedded tokenizer: what tests and the bench use as small stand-in models."""
    import shutil

    import torch
    from safetensors.torch import save_file

    if bridge is None:
        torch.manual_seed(int(config.get("seed", 0)))
        bridge = build_native_bridge(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / NATIVE_CONFIG).write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in bridge.state_dict().items()}, str(folder / NATIVE_WEIGHTS))
    for f in tokenizer_dir().glob("*.json"):
        shutil.copy(f, folder / f.name)
    return folder


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ModelSpecError(f"{folder}: no usable tokenizer files ({one_line(e)})") from None


def load_model(spec: str, device: str = "cpu", device_map: Any = None, dtype: str = "float32") -> LoadedModel:
    """Resolve a model spec and load it on ``device`` in eval mode, its weights in ``dtype``
    (float32 or bfloat16); with a Hugging Face ``device_map`` (config.parse_device_map),
    split over its devices instead."""
    folder = _local_folder(spec)
    if folder is not None:
        source = "embedded" if folder.parent == models_dir() else None
        if (folder / NATIVE_CONFIG).is_file():
            if device_map:
                raise ModelSpecError(f"{spec}: --device-map splits Hugging Face models; this one is in neuroscope's "
                                     "own format (one device: --device)")
            return _load_native(spec, folder, source or "local-native", device, dtype)
        if (folder / "config.json").is_file():
            return _load_transformers(spec, str(folder), "local-hf", folder, device, device_map, dtype)
        raise ModelSpecError(
            f"{folder} is not a model folder: expected {NATIVE_CONFIG} (neuroscope format) "
            "or config.json with weights and tokenizer files (Hugging Face format)"
        )
    if _looks_like_path(spec):
        raise ModelSpecError(f"model folder {spec} does not exist")
    hub_id = _hub_id(spec)
    if hub_id is None:
        raise ModelSpecError(
            f"unknown model {spec!r}; embedded models: {', '.join(embedded_names()) or '(none)'}; "
            "or give a local folder, a TransformerLens alias (gelu-1l) or a Hugging Face id"
        )
    if hub_offline():
        snapshot = cached_snapshot(hub_id)
        if snapshot is None:
            raise ModelSpecError(
                f"{spec!r} is a hub model ({hub_id}) that is not in the local Hugging Face cache "
                f"{hub_cache_dir()} and this machine is offline (HF_HUB_OFFLINE=1); download it there where there "
                f"is network (huggingface-cli download {hub_id}), set HF_HOME to the cache, or pass a folder: --model PATH"
            )
        return _load_transformers(spec, str(snapshot), "hf-cache", snapshot, device, device_map, dtype)
    return _load_transformers(spec, hub_id, "hub", None, device, device_map, dtype)


def _load_native(spec: str, folder: Path, source: str, device: str, dtype: str = "float32") -> LoadedModel:
    import torch
    from safetensors.torch import load_file

    config = json.loads((folder / NATIVE_CONFIG).read_text())
    bridge = build_native_bridge(config, device=device, dtype=getattr(torch, dtype))
    weights = folder / NATIVE_WEIGHTS
    if not weights.is_file():
        raise ModelSpecError(f"{folder}: {NATIVE_WEIGHTS} is missing")
    missing, unexpected = bridge.load_state_dict(load_file(str(weights), device=device), strict=False)
    if missing or unexpected:
        raise ModelSpecError(f"{weights}: weights do not fit the config ({missing=}, {unexpected=})")
    tokenizer = load_tokenizer(folder)
    return _finish(spec, source, bridge, tokenizer)


def _load_transformers(
    spec: str, name: str, source: str, folder: Path | None, device: str, device_map: Any = None,
    dtype: str = "float32",
) -> LoadedModel:
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    placement = {"device_map": device_map} if device_map else {"device": device}
    try:
        bridge = TransformerBridge.boot_transformers(name, dtype=getattr(torch, dtype), **placement)
    except Exception as e:  # HF raises OSError, ValueError, KeyError... for a bad folder
        where = f"{folder}" if folder else f"hub model {name}"
        raise ModelSpecError(f"{where}: cannot load as a Hugging Face model ({one_line(e)})") from None
    tokenizer = bridge.tokenizer or (load_tokenizer(folder) if folder else None)
    if tokenizer is None:
        raise ModelSpecError(f"{spec}: the model has no tokenizer")
    return _finish(spec, source, bridge, tokenizer)


def _forget_patterns(bridge: Any) -> None:
    """TransformerLens 4.3's attention bridges keep their last attention pattern as ``_pattern``
    ([batch, head, q, k]; nothing reads it): on a GPT-2-small shape at 8 x 1,024 tokens that
    is 12 x 400 MB held through and after every forward pass. Each is dropped as its attention
    module returns (the hooks have seen it by then)."""
    for module in bridge.modules():
        if hasattr(module, "_pattern"):
            module.register_forward_hook(_forget_pattern)


def _forget_pattern(module: Any, args: Any, output: Any) -> None:
    module._pattern = None


def _finish(spec: str, source: str, bridge: Any, tokenizer: Any) -> LoadedModel:
    bridge.eval()
    _forget_patterns(bridge)
    cfg = bridge.cfg
    n_experts = int(getattr(cfg, "num_experts", None) or 0)
    attn_only = bool(getattr(cfg, "attn_only", False))
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise ModelSpecError(f"{spec}: the tokenizer has neither a BOS nor an EOS token")
    info = ModelInfo(
        name=spec,
        source=source,
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        d_mlp=int(cfg.d_mlp) if attn_only or n_experts else _mlp_width(spec, bridge),
        n_heads=int(cfg.n_heads),
        d_head=int(cfg.d_head),
        n_ctx=int(cfg.n_ctx),
        d_vocab=int(cfg.d_vocab),
        act_fn=str(cfg.act_fn or "gelu"),
        bos_token_id=int(bos),
        attn_only=attn_only,
        gated=bool(getattr(cfg, "gated_mlp", False)),
        n_experts=n_experts,
        experts_per_token=int(getattr(cfg, "experts_per_token", None) or 0) if n_experts else 0,
    )
    return LoadedModel(bridge=bridge, tokenizer=tokenizer, info=info)


class _Probed(Exception):
    pass


def _mlp_width(spec: str, bridge: Any) -> int:
    """The number of MLP neurons, read from a two-token forward pass: the bridge's d_mlp can be
    wrong (OPT's ffn_dim is read as 4 x d_model)."""
    import torch

    width: list[int] = []

    def probe(tensor: Any, hook: Any) -> None:
        width.append(int(tensor.shape[-1]))
        raise _Probed

    device = next(bridge.parameters()).device
    try:
        with torch.inference_mode(), bridge.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", probe)]):
            bridge(torch.zeros((1, 2), dtype=torch.long, device=device))
    except _Probed:
        pass
    except Exception as e:  # the bridge has no such hook, or this architecture's forward fails here
        raise ModelSpecError(f"{spec}: cannot read the MLP of layer 0 ({one_line(e)}); this architecture's MLP "
                             "is not supported") from None
    if not width:
        raise ModelSpecError(f"{spec}: the MLP of layer 0 fired no hook_post; this architecture's MLP is not supported")
    return width[0]


def _local_folder(spec: str) -> Path | None:
    embedded = models_dir() / spec
    if "/" not in spec and (embedded / NATIVE_CONFIG).is_file():
        return embedded
    path = Path(spec).expanduser()
    return path if path.is_dir() else None


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec and Path(spec).parent.exists()


def _hub_id(spec: str) -> str | None:
    """The Hugging Face id for a TransformerLens alias or an owner/name id, else None."""
    from transformer_lens.supported_models import _model_alias_map

    official = _model_alias_map().get(spec.lower())
    if official is not None:
        return official
    parts = spec.split("/")
    return spec if len(parts) == 2 and all(parts) else None
