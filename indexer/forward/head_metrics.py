"""Per-token head metrics from one layer's value, pattern and z tensors (the ``heads`` site)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange


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
        v_norm = v.float().norm(dim=-1).transpose(1, 2)  # [batch, head, k]
        if v_norm.shape[1] != pattern.shape[1]:  # grouped-query attention: query head h reads kv head h // group
            v_norm = v_norm.repeat_interleave(pattern.shape[1] // v_norm.shape[1], dim=1)
        if pattern.device.type == "cpu":
            rows = np.empty((*pattern.shape[:3], 3), np.float32)
            causal_row_metrics(pattern.contiguous().numpy(), v_norm.contiguous().numpy(), rows)
            max_attn, entropy, value_weighted = torch.from_numpy(rows).unbind(-1)  # each [batch, head, q]
        else:
            max_attn = pattern[..., 1:].amax(dim=-1) if pattern.shape[-1] > 1 else torch.zeros_like(pattern[..., 0])
            # Each [batch, head, q, k] temporary is as big as the pattern: make one and reuse it.
            scratch = torch.special.xlogy(pattern, pattern)
            entropy = -scratch.sum(dim=-1)  # [batch, head, q]
            value_weighted = torch.mul(pattern, v_norm[:, :, None, :], out=scratch).amax(dim=-1)
        z = z.float()
        z_gram = torch.einsum("bphd,hde->bphe", z, self.gram.to(z.device))  # [batch, pos, head, d_head]
        out_sq = (z_gram * z).sum(dim=-1)  # [batch, pos, head]
        out_norm = out_sq.clamp_min(0).sqrt().transpose(1, 2)  # [batch, head, pos]
        metrics = torch.stack([max_attn, entropy, out_norm, value_weighted], dim=-1)  # [batch, head, pos, 4]
        return metrics.permute(0, 2, 1, 3).reshape(pattern.shape[0], pattern.shape[2], -1).contiguous()


@njit(parallel=True, cache=True)
def causal_row_metrics(pattern, v_norm, out):
    """The CPU path of max_attn, entropy and value_weighted in one pass over each row's causal
    half: pattern float32 [batch, head, q, k] (0 beyond k = q, as in every causal model),
    v_norm float32 [batch, head, k] -> out float32 [batch, head, q, 3]. The three torch passes
    over whole rows read six times as much (entropy is summed in float64 here)."""
    n_batch, n_head, n_q, n_k = pattern.shape
    for bh in prange(n_batch * n_head):
        b, h = bh // n_head, bh % n_head
        for q in range(n_q):
            top = np.float32(0.0)
            ent = 0.0
            vw = np.float32(0.0)
            for k in range(min(q + 1, n_k)):
                p = pattern[b, h, q, k]
                if k >= 1 and p > top:
                    top = p
                if p > 0:
                    ent -= np.float64(p) * math.log(np.float64(p))
                x = p * v_norm[b, h, k]
                if x > vw:
                    vw = x
            out[b, h, q, 0] = top
            out[b, h, q, 1] = ent
            out[b, h, q, 2] = vw
