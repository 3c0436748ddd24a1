"""The CPU kernel for head metrics (one pass over each row's causal half) against the float64
brute force and against the torch formulas the GPU path uses."""

from __future__ import annotations

import numpy as np
import torch

from indexer.forward.head_metrics import causal_row_metrics

from helpers.brute import head_metrics as brute_head_metrics


def causal_pattern(rng, batch, heads, n):
    scores = rng.normal(size=(batch, heads, n, n)) * 3
    scores[..., np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]] = -np.inf
    scores[0, 0, 5, :3] = 50.0  # a row with a tie at its top, where max_attn must skip BOS
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def test_causal_row_metrics_equal_the_brute_force_and_the_torch_formulas():
    rng = np.random.default_rng(0)
    pattern = causal_pattern(rng, 2, 3, 40)
    v = rng.normal(size=(2, 40, 3, 8)).astype(np.float32)
    v_norm = torch.from_numpy(v).norm(dim=-1).transpose(1, 2).contiguous()  # [batch, head, k]
    out = np.empty((2, 3, 40, 3), np.float32)
    causal_row_metrics(pattern, v_norm.numpy(), out)
    p = torch.from_numpy(pattern)
    torch_max = p[..., 1:].amax(-1)
    torch_entropy = -torch.special.xlogy(p, p).sum(-1)
    torch_vw = (p * v_norm[:, :, None, :]).amax(-1)
    assert torch.equal(torch.from_numpy(out[..., 0]), torch_max)  # maxima and products: bit for bit
    assert torch.equal(torch.from_numpy(out[..., 2]), torch_vw)
    np.testing.assert_allclose(out[..., 1], torch_entropy.numpy(), rtol=1e-5, atol=1e-6)
    z = rng.normal(size=(40, 3, 8)).astype(np.float32)
    w_o = rng.normal(size=(3, 8, 16)).astype(np.float32)
    for b in range(2):
        want = brute_head_metrics(pattern[b], v[b], z, w_o).reshape(40, 3, 4)
        np.testing.assert_allclose(out[b, :, :, 0].T, want[..., 0], rtol=1e-6)
        np.testing.assert_allclose(out[b, :, :, 1].T, want[..., 1], rtol=1e-5, atol=1e-6)  # float64 sums: closer
        np.testing.assert_allclose(out[b, :, :, 2].T, want[..., 3], rtol=1e-5)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 0, 1] == 0  # position 0 attends only to BOS
