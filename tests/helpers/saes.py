"""Random SAEs and transcoders written in SAELens and sparsify formats, and the encode
formulas applied by brute force (numpy, float64), written from the published formulas
(/work/shared/FORMATS.md section 1), not from indexer.forward.sae_encode.

The reference also says where float32 rounding may legitimately flip a discrete decision
(a JumpReLU threshold, a gate, the k-th place of a top-k): ``ambiguous`` marks those tokens,
which the tests skip (and count).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MARGIN = 1e-4  # a decision closer than this (relative to the pre-activation scale) may flip in float32


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def saelens_weights(arch: str, d_in: int, d_sae: int, d_out: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of a SAELens architecture, scaled so that a share of latents fires."""
    rng = _rng(seed)
    d_out = d_out or d_in
    w = {"W_enc": rng.normal(0, 1 / np.sqrt(d_in), (d_in, d_sae)), "W_dec": rng.normal(0, 0.1, (d_sae, d_out)),
         "b_dec": rng.normal(0, 0.05, d_out)}
    if arch == "gated":
        w.update(b_gate=rng.normal(-0.2, 0.2, d_sae), b_mag=rng.normal(0, 0.2, d_sae), r_mag=rng.normal(0, 0.3, d_sae))
    else:
        w["b_enc"] = rng.normal(-0.2, 0.2, d_sae)
    if "jumprelu" in arch:
        w["threshold"] = np.abs(rng.normal(0.3, 0.2, d_sae))
    if "skip" in arch:
        w["W_skip"] = rng.normal(0, 0.1, (d_out, d_in))
    return w


def write_saelens(folder: Path, arch: str, hook: str, d_in: int, d_sae: int, *, d_out: int | None = None,
                  k: int | None = None, old_names: bool = False, seed: int = 0, **cfg_extra) -> Path:
    """A SAELens folder; ``old_names`` writes a pre-6.0 config (hook_point, activation_fn_str)."""
    import torch
    from safetensors.torch import save_file

    weights = saelens_weights(arch, d_in, d_sae, d_out, seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({n: torch.tensor(v, dtype=torch.float32) for n, v in weights.items()}, str(folder / "sae_weights.safetensors"))
    if old_names:
        cfg = {"d_in": d_in, "d_sae": d_sae, "hook_point": hook, "activation_fn_str": "topk" if arch == "topk" else "relu",
               "activation_fn_kwargs": {"k": k} if k else {}, "apply_b_dec_to_input": True, "normalize_activations": False,
               "dtype": "float32", "device": "cpu", "context_size": 32}
    else:
        cfg = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
               "apply_b_dec_to_input": "transcoder" not in arch, "normalize_activations": "none",
               "reshape_activations": "none", "metadata": {"hook_name": hook, "sae_lens_version": "6.18.0"}}
        if d_out is not None:
            cfg["d_out"] = d_out
        if k is not None:
            cfg["k"] = k
    cfg.update(cfg_extra)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def write_sparsify(folder: Path, d_in: int, d_sae: int, k: int, transcode: bool = False, seed: int = 0) -> Path:
    """A sparsify folder (the folder's name is the hookpoint, an HF module name)."""
    import torch
    from safetensors.torch import save_file

    rng = _rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"encoder.weight": rng.normal(0, 1 / np.sqrt(d_in), (d_sae, d_in)), "encoder.bias": rng.normal(-0.1, 0.2, d_sae),
               "W_dec": rng.normal(0, 0.1, (d_sae, d_in)), "b_dec": rng.normal(0, 0.05, d_in)}
    save_file({n: torch.tensor(v, dtype=torch.float32) for n, v in tensors.items()}, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": d_sae // d_in, "normalize_decoder": True, "num_latents": d_sae,
           "k": k, "multi_topk": False, "skip_connection": False, "transcode": transcode, "d_in": d_in}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def read_folder(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    name = "sae_weights.safetensors" if (folder / "sae_weights.safetensors").is_file() else "sae.safetensors"
    return json.loads((folder / "cfg.json").read_text()), {k: v.astype(np.float64) for k, v in load_file(str(folder / name)).items()}


def reference_encode(folder: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(latents [n, d_sae], ambiguous [n, d_sae] bool) for activations x [n, d_in], from the formulas."""
    cfg, w = read_folder(folder)
    x = x.astype(np.float64)
    if (folder / "sae.safetensors").is_file():  # sparsify: ReLU, then the k largest
        xp = x if cfg.get("transcode") else x - w["b_dec"]
        a = np.maximum(xp @ w["encoder.weight"].T + w["encoder.bias"], 0)
        return _top(a, a, cfg["k"])
    arch = cfg.get("architecture", "standard")
    if cfg.get("activation_fn_str") == "topk":
        arch = "topk"
    norm = cfg.get("normalize_activations")
    if norm == "constant_norm_rescale":
        x = x * np.sqrt(cfg["d_in"]) / np.linalg.norm(x, axis=-1, keepdims=True)
    elif norm == "layer_norm":
        x = x - x.mean(-1, keepdims=True)
        x = x / (x.std(-1, ddof=1, keepdims=True) + 1e-5)
    if cfg.get("apply_b_dec_to_input", True) and "transcoder" not in arch:
        x = x - w["b_dec"]
    if arch == "gated":
        g = x @ w["W_enc"] + w["b_gate"]
        m = np.maximum(x @ (w["W_enc"] * np.exp(w["r_mag"])) + w["b_mag"], 0)
        return (g > 0) * m, _near(g, 0)
    h = x @ w["W_enc"] + w["b_enc"]
    if arch == "topk":
        k = cfg.get("k") or cfg["activation_fn_kwargs"]["k"]
        return _top(h, np.maximum(h, 0), k)
    if "jumprelu" in arch:
        theta = np.maximum(w["threshold"], 0)
        return np.where(h > theta, h, 0.0), _near(h, theta)
    return np.maximum(h, 0), np.zeros(h.shape, bool)


def _near(h: np.ndarray, at) -> np.ndarray:
    return np.abs(h - at) < MARGIN * (1 + np.abs(h))


def _top(score: np.ndarray, value: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score, axis=-1, kind="stable")
    keep = order[:, :k]
    out = np.zeros_like(value)
    rows = np.arange(len(score))[:, None]
    out[rows, keep] = value[rows, keep]
    kth, next_ = score[rows[:, 0], order[:, k - 1]], score[rows[:, 0], order[:, k]]
    # a near tie at the k-th place matters only if the k-th value is kept non-zero; it may swap
    # which latent of the token is kept, so the whole token is ambiguous
    tie = (np.abs(kth - next_) < MARGIN * (1 + np.abs(kth))) & (kth > 0)
    return out, np.broadcast_to(tie[:, None], out.shape)


def max_rel_err(got, ref, floor: float = 0.05) -> float:
    """max |got - ref| / max(|ref|, floor * max|ref|): the relative error of every value at
    least ``floor`` of the largest, and for smaller ones (zeros included: a latent that should
    not fire) the error relative to that floor. float32 sums of O(1) terms that cancel to
    ~1e-4 carry absolute rounding of ~1e-8, so a pure relative error of near-zero values
    measures the cancellation, not the encoder."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if not len(ref):
        return 0.0
    scale = np.maximum(np.abs(ref), floor * np.abs(ref).max())
    return float(np.max(np.abs(got - ref) / np.where(scale > 0, scale, 1.0)))


def hooked_activations(cfg, hooks: list[str]) -> tuple[list[int], list[np.ndarray], dict[str, list[np.ndarray]]]:
    """(ctx_ids, token ids, hook -> one [len, ...] float32 array per context) over the contexts
    of ``cfg``, in stream order, from ``run_with_cache`` on the engine's padded batches."""
    import torch

    from indexer.forward.runner import make_batch
    from indexer.inputs.contexts import ContextStream, batches
    from indexer.inputs.corpus import parse_corpus_spec
    from indexer.inputs.models import load_model

    model = load_model(cfg.model)
    ctx_len = cfg.ctx_len or min(model.info.n_ctx, 1024)
    stream = ContextStream([parse_corpus_spec(c) for c in cfg.corpus], model.tokenizer, model.info.bos_token_id,
                           ctx_len, cfg.tokens, order=cfg.order, seed=cfg.seed, tokens_bos=cfg.tokens_bos)
    ctx_ids, tokens, acts = [], [], {h: [] for h in hooks}
    for group in batches(iter(stream), cfg.batch_size):
        batch = make_batch(group, model.info.bos_token_id, "cpu", ctx_len)
        with torch.inference_mode():
            _, cache = model.bridge.run_with_cache(batch.tokens, names_filter=list(hooks))
        for row, ctx in enumerate(group):
            n = len(ctx.token_ids)
            ctx_ids.append(ctx.ctx_id)
            tokens.append(np.asarray(ctx.token_ids))
            for h in hooks:
                acts[h].append(cache[h][row, :n].float().numpy().reshape(n, -1))
    return ctx_ids, tokens, acts
