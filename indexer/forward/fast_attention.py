"""Fused attention where no site reads the attention pattern.

TransformerLens 4.x's bridge rebuilds GPT-2-style attention by hand (scores, mask, softmax,
weights @ v) so that ``hook_attn_scores`` and ``hook_pattern`` can fire: on a GPT-2-small
shape that is about half of the forward pass on a CPU, for a [batch, head, q, k] pattern an
MLP-only index never reads. In layers whose attention hooks no site reads, this swaps that
rebuild for ``torch.nn.functional.scaled_dot_product_attention`` (causal, the same scale),
the kernel ``transformers`` itself uses by default. The stream and finalize's re-runs take the
same path, so an index is self-consistent; values differ from the eager rebuild by float
rounding only (checked against the model's own ``transformers`` forward in the tests).

Only for attention the rebuild computes plainly: GPT-2's (``GPT2Attention``) without layer-
index scaling, upcasting, a KV cache, per-head results or a padding mask.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

from indexer.forward.sites import Site

SUPPORTED = ("GPT2Attention",)


def use_fused_attention(bridge: Any, plan: list[Site]) -> list[int]:
    """Swap in fused attention in every layer whose attention hooks no site of ``plan`` reads;
    the layers it was swapped in."""
    read = {site.layer for site in plan for name in site.hook_names() if ".attn." in name or name.endswith(".attn")}
    done = []
    for layer, block in enumerate(getattr(bridge, "blocks", [])):
        attn = getattr(block, "attn", None)
        if layer in read or not _plain(attn):
            continue
        attn._reconstruct_attention = types.MethodType(_fused, attn)
        done.append(layer)
    return done


def _plain(attn: Any) -> bool:
    original = getattr(attn, "original_component", None)
    cfg = getattr(attn, "config", None)
    return (
        original is not None and type(original).__name__ in SUPPORTED and cfg is not None
        and hasattr(attn, "_reshape_qkv_to_heads")
        and not getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
        and not getattr(attn, "_reorder_and_upcast_attn", False)
        and not getattr(cfg, "use_attn_result", False)
    )


def _fused(self: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> tuple:
    """``JointQKVAttentionBridge._reconstruct_attention`` with SDPA; no pattern is returned."""
    if kwargs.get("past_key_values") is not None or kwargs.get("layer_past") is not None or _padded(kwargs):
        return type(self)._reconstruct_attention(self, q, k, v, **kwargs)
    n_heads = self.config.n_heads
    n_kv = getattr(self.config, "n_key_value_heads", None) or n_heads
    q, k, v, batch, seq, d_head = self._reshape_qkv_to_heads(q, k, v, n_heads, n_kv)
    if n_kv != n_heads:
        k, v = (t.repeat_interleave(n_heads // n_kv, dim=1) for t in (k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=d_head ** -0.5)  # [batch, head, seq, d]
    out = self._reshape_attn_output(out, batch, seq, n_heads, d_head)
    return (self._apply_output_projection(out), None)


def _padded(kwargs: dict) -> bool:
    """Whether an attention mask beyond the causal one is passed (then the rebuild handles it)."""
    mask = kwargs.get("attention_mask")
    if mask is None or not isinstance(mask, torch.Tensor):
        return False
    if mask.dtype == torch.bool:
        causal = torch.ones(mask.shape[-2], mask.shape[-1], dtype=torch.bool, device=mask.device).tril()
        return not bool((mask == causal).all())
    return bool((mask.amin(dim=(-1, -2)) < 0).any()) and not _is_causal_additive(mask)


def _is_causal_additive(mask: torch.Tensor) -> bool:
    q, k = mask.shape[-2], mask.shape[-1]
    causal = torch.ones(q, k, dtype=torch.bool, device=mask.device).tril()
    return bool(((mask == 0) == causal).all())
