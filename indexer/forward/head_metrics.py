"""Per-token head metrics from one layer's value, pattern and z tensors (the ``heads`` site)."""

from __future__ import annotations

from typing import Any


class HeadMetrics:
    """Per-token head metrics computed from a layer's value, pattern and z tensors."""

    def __init__(self, bridge: Any, layer: int):
        import torch

        w_o = bridge.blocks[layer].attn.W_O.detach().float()  # [head, d_head, d_model]
        # ‖z_h W_O^h‖² = z_h (W_O^h W_O^hᵀ) z_hᵀ: a d_head² Gram matrix instead of a d_model product.
        self.gram = torch.einsum("hdm,hem->hde", w_o, w_o)  # [head, d_head, d_head]

    def __call__(self, v: Any, pattern: Any, z: Any) -> Any:
        """v, z: [batch, pos, head, d_head]; pattern: [batch, head, q, k] -> [batch, pos, head * 4]."""
        import torch

        pattern = pattern.float()
        max_attn = pattern[..., 1:].amax(dim=-1) if pattern.shape[-1] > 1 else torch.zeros_like(pattern[..., 0])
        # Each [batch, head, q, k] temporary is as big as the pattern: make one and reuse it.
        scratch = torch.special.xlogy(pattern, pattern)
        entropy = -scratch.sum(dim=-1)  # [batch, head, q]
        v_norm = v.float().norm(dim=-1).transpose(1, 2)  # [batch, head, k]
        value_weighted = torch.mul(pattern, v_norm[:, :, None, :], out=scratch).amax(dim=-1)  # [batch, head, q]
        z = z.float()
        z_gram = torch.einsum("bphd,hde->bphe", z, self.gram.to(z.device))  # [batch, pos, head, d_head]
        out_sq = (z_gram * z).sum(dim=-1)  # [batch, pos, head]
        out_norm = out_sq.clamp_min(0).sqrt().transpose(1, 2)  # [batch, head, pos]
        metrics = torch.stack([max_attn, entropy, out_norm, value_weighted], dim=-1)  # [batch, head, pos, 4]
        return metrics.permute(0, 2, 1, 3).reshape(pattern.shape[0], pattern.shape[2], -1).contiguous()
