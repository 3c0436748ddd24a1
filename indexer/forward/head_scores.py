"""Head scores: how much each head behaves like a known head type, on synthetic text.

The input is BOS followed by a random token sequence repeated twice (``[BOS] r r``), the
standard probe: in the second copy an induction head attends to the token after the previous
occurrence of the current token, a duplicate-token head to that occurrence itself.
Each score is the mean attention from the relevant queries to the relevant key:

- prev_token: key ``q - 1`` for every query after the first real token;
- duplicate_token: key ``q - L`` for queries in the second copy;
- induction: key ``q - L + 1`` for queries in the second copy;
- bos: key 0 for every query after BOS.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from indexer.forward.hooks import Stop

SEQ_LEN = 48
N_SEQUENCES = 32
SEED = 1234


def repeated_tokens(d_vocab: int, bos: int, n_ctx: int, seed: int = SEED) -> torch.Tensor:
    """[N_SEQUENCES, 1 + 2L] tokens: BOS then a random sequence twice."""
    length = min(SEQ_LEN, (n_ctx - 1) // 2)
    rng = np.random.default_rng(seed)
    random = rng.integers(1, d_vocab, size=(N_SEQUENCES, length))
    random[random == bos] = (bos + 1) % d_vocab
    bos_col = np.full((N_SEQUENCES, 1), bos)
    return torch.from_numpy(np.concatenate([bos_col, random, random], axis=1))


def scores_from_pattern(pattern: torch.Tensor, length: int) -> dict[str, np.ndarray]:
    """pattern: [batch, head, q, k] on ``[BOS] r r`` with ``len(r) == length`` -> per head."""
    p = pattern.float().mean(dim=0)  # [head, q, k]
    q_all = torch.arange(2, p.shape[1])
    q_second = torch.arange(length + 1, 2 * length + 1)
    return {
        "prev_token": p[:, q_all, q_all - 1].mean(-1).numpy(),
        "duplicate_token": p[:, q_second, q_second - length].mean(-1).numpy(),
        "induction": p[:, q_second, q_second - length + 1].mean(-1).numpy(),
        "bos": p[:, torch.arange(1, p.shape[1]), 0].mean(-1).numpy(),
    }


def head_scores(model: Any, layers: list[int]) -> dict[str, np.ndarray]:
    """Columns of the head_scores table for the given layers."""
    info = model.info
    tokens = repeated_tokens(info.d_vocab, info.bos_token_id, info.n_ctx)
    length = (tokens.shape[1] - 1) // 2
    patterns: dict[int, torch.Tensor] = {}

    def keep(layer: int, last: bool):
        def hook(tensor: torch.Tensor, hook: Any) -> None:
            patterns[layer] = tensor.detach().cpu()
            if last:
                raise Stop

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_pattern", keep(layer, layer == max(layers))) for layer in layers]
    device = next(model.bridge.parameters()).device
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
        try:
            model.bridge(tokens.to(device))
        except Stop:
            pass
    columns: dict[str, list] = {"layer": [], "head": [], "prev_token": [], "induction": [], "duplicate_token": [], "bos": []}
    for layer in layers:
        scores = scores_from_pattern(patterns[layer], length)
        n_heads = len(scores["bos"])
        columns["layer"] += [layer] * n_heads
        columns["head"] += list(range(n_heads))
        for name, values in scores.items():
            columns[name] += values.tolist()
    return {k: np.asarray(v, np.int32 if k in ("layer", "head") else np.float32) for k, v in columns.items()}
