"""The two on-disk SAE formats, read into one description (``SaeConfig``) and one set of tensors.

- SAELens (``cfg.json`` + ``sae_weights.safetensors``), 6.x configs and the older names
  (``hook_point``, ``activation_fn_str``, top-level ``hook_name``, boolean
  ``normalize_activations``). Architectures: standard, gated, jumprelu, topk, and the
  transcoders (transcoder, skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder,
  with ``d_out`` and an optional ``W_skip``).
- EleutherAI sparsify (``cfg.json`` + ``sae.safetensors``): ``encoder.weight`` is
  [d_sae, d_in] (nn.Linear), top-k (or groupmax) of the ReLU'd pre-activations; a
  transcoder (``transcode``) reads its module's input and does not subtract ``b_dec``. Its
  hook is the folder name (an HF module name such as ``layers.3`` or ``h.0.mlp``).

Every tensor is normalised to SAELens's layout: W_enc [d_in, d_sae], W_dec [d_sae, d_out].
Facts and sources: /work/shared/FORMATS.md section 1 (SAELens 6.18-6.52, sparsify 1.3).

Layer rule: imports only ``indexer.errors``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from indexer.errors import SaeError

SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
CONFIG = "cfg.json"
SAELENS_ARCHITECTURES = ("standard", "gated", "jumprelu", "topk", "transcoder", "skip_transcoder",
                         "jumprelu_transcoder", "jumprelu_skip_transcoder")
SPARSIFY_ACTIVATIONS = ("topk", "groupmax")
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm", "expected_average_only_in")


@dataclass(frozen=True)
class SaeConfig:
    """What the encoder needs, whatever the format.

    Attributes:
        format: 'saelens' or 'sparsify'.
        architecture: a SAELens architecture, or 'sparsify_topk' / 'sparsify_groupmax'.
        hook: the hook the latents read, as the config names it (a TransformerLens name for
            SAELens, an HF module name for sparsify).
        hook_out: a transcoder's output hook (recorded only), else None.
        d_in, d_sae, d_out: widths (d_out = d_in for an SAE).
        k: top-k's k (sparsify groupmax: the number of groups), else None.
        transcoder: reads one activation and predicts another (never subtracts b_dec).
        apply_b_dec_to_input: x - b_dec before the encoder.
        normalize_activations: 'none', 'constant_norm_rescale', 'layer_norm' or
            'expected_average_only_in' (needs activation_scaler.json next to the weights).
        rescale_acts_by_decoder_norm: SAELens top-k: pre-activations times ‖W_dec row‖.
        reshape_hook_z: flatten [.., n_heads, d_head] into d_in first.
    """

    format: str
    architecture: str
    hook: str
    hook_out: str | None
    d_in: int
    d_sae: int
    d_out: int
    k: int | None
    transcoder: bool
    apply_b_dec_to_input: bool
    normalize_activations: str
    rescale_acts_by_decoder_norm: bool = False
    reshape_hook_z: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def saelens_config(cfg: dict[str, Any], where: str) -> SaeConfig:
    """A SAELens cfg.json (6.x or older) as an SaeConfig."""
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if not hook:
        raise SaeError(f"{where}: cfg.json names no hook (metadata.hook_name, hook_name or hook_point)")
    arch = cfg.get("architecture") or "standard"
    activation = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"
    k = cfg.get("k")
    if activation == "topk":  # pre-6.0: the activation function said top-k
        arch = "topk" if arch == "standard" else arch
        k = k or (cfg.get("activation_fn_kwargs") or {}).get("k")
    elif arch == "standard" and activation not in ("relu",):
        raise SaeError(f"{where}: activation function {activation!r} is not supported (expected relu or topk)")
    if arch not in SAELENS_ARCHITECTURES:
        raise SaeError(f"{where}: unknown SAE architecture {arch!r}; neuroscope reads {', '.join(SAELENS_ARCHITECTURES)}")
    if arch == "topk" and not k:
        raise SaeError(f"{where}: a topk SAE needs k in cfg.json")
    transcoder = "transcoder" in arch
    d_in, d_sae = _int(cfg, "d_in", where), _int(cfg, "d_sae", where)
    normalize = cfg.get("normalize_activations", "none")
    normalize = {True: "expected_average_only_in", False: "none", None: "none"}.get(normalize, normalize)
    if normalize not in NORMALIZATIONS:
        raise SaeError(f"{where}: normalize_activations {normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
    return SaeConfig(
        format="saelens", architecture=arch, hook=str(hook),
        hook_out=meta.get("hook_name_out") or cfg.get("hook_name_out"),
        d_in=d_in, d_sae=d_sae, d_out=int(cfg.get("d_out") or d_in) if transcoder else d_in,
        k=int(k) if arch == "topk" else None, transcoder=transcoder,
        # transcoders never subtract b_dec (SAELens refuses the flag for them)
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)) and not transcoder,
        normalize_activations=normalize,
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)) and arch == "topk",
        reshape_hook_z=cfg.get("reshape_activations") == "hook_z",
    )


def sparsify_config(cfg: dict[str, Any], hookpoint: str, d_sae: int, where: str) -> SaeConfig:
    """A sparsify cfg.json (its hookpoint is the folder name; d_sae from the weights when
    ``num_latents`` is 0)."""
    activation = cfg.get("activation", "topk")
    if activation not in SPARSIFY_ACTIVATIONS:
        raise SaeError(f"{where}: unknown sparsify activation {activation!r}; expected {' or '.join(SPARSIFY_ACTIVATIONS)}")
    d_in = _int(cfg, "d_in", where)
    transcoder = bool(cfg.get("transcode", False))
    return SaeConfig(
        format="sparsify", architecture=f"sparsify_{activation}", hook=hookpoint, hook_out=hookpoint if transcoder else None,
        d_in=d_in, d_sae=d_sae, d_out=d_in, k=_int(cfg, "k", where), transcoder=transcoder,
        apply_b_dec_to_input=not transcoder, normalize_activations="none",
    )


def saelens_tensors(raw: dict[str, Any], cfg: SaeConfig, where: str) -> dict[str, Any]:
    """SAELens weights, checked against the config's shapes."""
    t = dict(raw)
    if "threshold" not in t and "log_threshold" in t:  # old JumpReLU checkpoints
        t["threshold"] = t.pop("log_threshold").exp()
    for scale in ("scaling_factor", "finetuning_scaling_factor"):
        s = t.pop(scale, None)
        if s is not None and not bool((s == 1).all()):
            raise SaeError(f"{where}: {scale} is not all ones; fold it into W_dec first (SAELens: fold_W_dec_norm)")
    need = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.d_out), "b_dec": (cfg.d_out,)}
    if cfg.architecture == "gated":
        need.update(b_gate=(cfg.d_sae,), b_mag=(cfg.d_sae,), r_mag=(cfg.d_sae,))
    else:
        need["b_enc"] = (cfg.d_sae,)
    if "jumprelu" in cfg.architecture:
        need["threshold"] = (cfg.d_sae,)
    if "skip" in cfg.architecture:
        need["W_skip"] = (cfg.d_out, cfg.d_in)
    _check(t, need, where, SAELENS_WEIGHTS)
    return {name: t[name] for name in need}


def sparsify_tensors(raw: dict[str, Any], cfg: SaeConfig, where: str) -> dict[str, Any]:
    """sparsify weights in SAELens's layout (encoder.weight and W_dec transposed as needed)."""
    need = {"encoder.weight": (cfg.d_sae, cfg.d_in), "encoder.bias": (cfg.d_sae,), "b_dec": (cfg.d_in,)}
    if "W_dec" in raw:
        need["W_dec"] = (cfg.d_sae, cfg.d_in)
    if "W_skip" in raw:
        need["W_skip"] = (cfg.d_in, cfg.d_in)
    _check(raw, need, where, SPARSIFY_WEIGHTS)
    out = {"W_enc": raw["encoder.weight"].T.contiguous(), "b_enc": raw["encoder.bias"], "b_dec": raw["b_dec"]}
    # Without a stored decoder sparsify ties it to the encoder (decoder=False).
    out["W_dec"] = raw["W_dec"] if "W_dec" in raw else raw["encoder.weight"]
    if "W_skip" in raw:
        out["W_skip"] = raw["W_skip"]
    return out


def sparsify_latents(raw: dict[str, Any], cfg: dict[str, Any], where: str) -> int:
    """d_sae of a sparsify SAE: num_latents, or the encoder's rows when it is 0."""
    weight = raw.get("encoder.weight")
    if weight is None or weight.ndim != 2:
        raise SaeError(f"{where}: {SPARSIFY_WEIGHTS} has no 2-d encoder.weight")
    n = int(cfg.get("num_latents") or 0)
    return n or int(weight.shape[0])


def _check(t: dict[str, Any], need: dict[str, tuple[int, ...]], where: str, file: str) -> None:
    for name, shape in need.items():
        if name not in t:
            raise SaeError(f"{where}: {file} has no {name} (keys: {', '.join(sorted(t)) or 'none'})")
        got = tuple(t[name].shape)
        if got != shape:
            raise SaeError(f"{where}: {name} has shape {list(got)} but cfg.json gives {list(shape)}")


def _int(cfg: dict[str, Any], key: str, where: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SaeError(f"{where}: cfg.json {key}={value!r} but expected a positive integer")
    return value


def sparsify_hook_layer(hookpoint: str) -> int | None:
    """The layer number in an HF module name ('layers.3.mlp' -> 3), or None.

    >>> sparsify_hook_layer("model.layers.12.mlp"), sparsify_hook_layer("embed_tokens")
    (12, None)
    """
    found = re.search(r"(?:layers|h|blocks)[._](\d+)", hookpoint)
    return int(found.group(1)) if found else None
