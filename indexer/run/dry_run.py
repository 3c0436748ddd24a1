"""``neuroscope index ... --dry-run``: the plan of a run from the model's config alone.

Reads only a config (an embedded model's ``bridge_config.json``, a folder's or a cached hub
model's ``config.json``, through ``transformers.AutoConfig`` without weights), plans the sites
as a run would, and prints features per site, the memory estimate per part (and per device
when the model will be split), and the tokens to read. No weights are loaded and no corpus
is read, so a researcher can size an overnight run of a model too large for this machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from indexer.config import IndexConfig, parse_device_map
from indexer.errors import ModelSpecError
from indexer.forward.sites import Site, plan_sites
from indexer.inputs.sae import parse_sae_spec, sae_width
from indexer.inputs.data import models_dir
from indexer.inputs.models import ModelInfo
from indexer.run.safety import estimate_text, memory_estimate, size_text


def info_from_config(spec: str) -> ModelInfo:
    """A ModelInfo read from the model's config only (ModelSpecError if there is none)."""
    embedded = models_dir() / spec / "bridge_config.json"
    if "/" not in spec and embedded.is_file():
        c = json.loads(embedded.read_text())
        return ModelInfo(name=spec, source="embedded", n_layers=c["n_layers"], d_model=c["d_model"],
                         d_mlp=c.get("d_mlp") or 0, n_heads=c["n_heads"], d_head=c["d_head"], n_ctx=c["n_ctx"],
                         d_vocab=c["d_vocab"], act_fn=c.get("act_fn") or "", bos_token_id=0,
                         attn_only=bool(c.get("attn_only")), gated=bool(c.get("gated_mlp")))
    return _from_hf_config(spec, _hf_config(spec))


def _hf_config(spec: str) -> Any:
    from transformers import AutoConfig

    from indexer.inputs.hf_cache import cached_snapshot, hub_cache_dir

    folder = Path(spec).expanduser()
    if not folder.is_dir():
        folder = cached_snapshot(spec) or folder
    try:
        return AutoConfig.from_pretrained(str(folder) if folder.is_dir() else spec, local_files_only=not folder.is_dir()
                                          and _offline())
    except (OSError, ValueError) as e:
        where = f"a folder, or a hub name in {hub_cache_dir()}"
        raise ModelSpecError(f"{spec!r}: no model config found ({where}): {str(e).splitlines()[0]}") from None


def _offline() -> bool:
    from indexer.errors import hub_offline

    return hub_offline()


def _first(c: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(c, name, None)
        if value is not None:
            return value
    return default


def _from_hf_config(spec: str, c: Any) -> ModelInfo:
    text = getattr(c, "text_config", None) or c
    d_model = _first(text, "hidden_size", "n_embd", "d_model")
    n_heads = _first(text, "num_attention_heads", "n_head", "num_heads")
    n_experts = _first(text, "num_local_experts", "num_experts", "n_routed_experts", default=0) or 0
    d_mlp = _first(text, "moe_intermediate_size", "expert_ffn_hidden_size") if n_experts else None
    d_mlp = d_mlp or _first(text, "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size") or 4 * d_model
    gated = getattr(text, "model_type", "") not in ("gpt2", "gpt_neox", "gptj", "opt", "bloom", "phi", "gpt_neo")
    return ModelInfo(
        name=spec, source="config", n_layers=_first(text, "num_hidden_layers", "n_layer", "num_layers"),
        d_model=d_model, d_mlp=int(d_mlp), n_heads=n_heads,
        d_head=_first(text, "head_dim", default=d_model // n_heads) or d_model // n_heads,
        n_ctx=_first(text, "max_position_embeddings", "n_positions", "seq_length", default=2048),
        d_vocab=_first(text, "vocab_size", default=0), act_fn=str(_first(text, "hidden_act", "activation_function",
                                                                          default="")),
        bos_token_id=_first(text, "bos_token_id", default=0) or 0, gated=gated,
        n_experts=int(n_experts), experts_per_token=int(_first(text, "num_experts_per_tok", default=0) or 0))


def model_bytes(info: ModelInfo, dtype: str) -> int:
    """The weights' bytes from the shape alone: embedding and unembedding, attention, the MLP
    (every expert's), norms and biases left out (under 1% of a model); they load in ``dtype``
    (models.load_model)."""
    d, h = info.d_model, info.n_heads * info.d_head
    mlp = (3 if info.gated else 2) * d * info.d_mlp * max(1, info.n_experts)
    params = 2 * info.d_vocab * d + info.n_ctx * d * (info.source == "native") + info.n_layers * (4 * d * h + mlp)
    return params * (2 if dtype == "bfloat16" else 4)


def split_devices(device_map: str) -> int:
    """How many devices ``--device-map`` spreads the model over: a JSON map's distinct devices,
    or every visible GPU for a named strategy (1 without one)."""
    if not device_map:
        return 1
    parsed = parse_device_map(device_map)
    if isinstance(parsed, dict):
        return len({str(d) for d in parsed.values()})
    import torch

    return max(1, torch.cuda.device_count())


def dry_run(cfg: IndexConfig, n_devices: int | None = None) -> dict[str, Any]:
    """Print the plan of ``cfg`` and return it as a dict (no weights, no corpus); ``n_devices``:
    the devices a split model spreads over (default: from ``--device-map``)."""
    n_devices = split_devices(cfg.device_map) if n_devices is None else n_devices
    info = info_from_config(cfg.model)
    plan = plan_sites(info, cfg.sites, cfg.layers)
    for spec in map(parse_sae_spec, cfg.sae):  # an SAE's latents: d_sae from its config, weights not read
        plan.append(Site(spec.site, 0, sae_width(spec)))
    widths = [s.n_features for s in plan]  # an experts site: every expert's neurons
    n_features = sum(widths)
    ctx_len = min(cfg.ctx_len or min(info.n_ctx, 1024), info.n_ctx)
    est = memory_estimate(cfg, n_features, ctx_len, largest_site=max(widths, default=0),
                          model_bytes=model_bytes(info, cfg.dtype),
                          heads=info.n_heads if any(s.name == "heads" for s in plan) else 0)
    sites: dict[str, dict[str, int]] = {}
    for site, width in zip(plan, widths):
        entry = sites.setdefault(site.name, {"layers": 0, "features": 0})
        entry["layers"] += 1
        entry["features"] += width
    out = {"model": info.to_dict(), "sites": sites, "features": n_features, "ctx_len": ctx_len,
           "tokens": cfg.tokens, "memory": est, "per_device": est["recorders"] // max(1, n_devices)}
    lines = [f"plan for {cfg.model} ({info.n_layers} layers, d_model {info.d_model}, d_mlp {info.d_mlp}, "
             f"{info.n_heads} heads{f', {info.n_experts} experts' if info.n_experts else ''}); nothing loaded, nothing read"]
    lines += [f"  {name:<10} {v['layers']:>3} layers  {v['features']:>10,} features" for name, v in sites.items()]
    lines.append(f"  {n_features:,} features in all, {est['per_feature'] / 1024:.1f} KB of recorder state each (window "
                 f"pool: {est['pool_per_sample']:g} entries per sample"
                 + ("; --window-pool auto grows it up to 6 where the memory allows)" if cfg.window_pool == "auto" else ")"))
    lines.append(f"  memory estimate {estimate_text(est)}")
    if n_devices > 1:
        lines.append(f"  split over {n_devices} devices (--device-map): each holds about 1/{n_devices} of the weights "
                     f"and recorders, {size_text(est['recorders'] // n_devices)} of recorders")
    lines.append(f"  tokens to read: {cfg.tokens:,} (ctx_len {ctx_len}, batch {cfg.batch_size})" if cfg.tokens
                 else f"  tokens to read: every document of the corpora (ctx_len {ctx_len})")
    print("\n".join(lines), file=sys.stderr)
    return out
