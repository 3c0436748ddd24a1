"""Expert usage of a mixture-of-experts model: how often the router of each layer chooses
each expert (table ``expert_usage``).

Method: the stored contexts (a hash-ordered sample up to ``--sample-tokens``, as the regex
analysis reads; all of them with ``--store-contexts all`` and a large enough sample) are run
through the model with a hook on every layer's ``blocks.L.mlp.hook_expert_indices``
(the experts the router picked for each token, [batch * pos, top_k], batch-major); BOS and
padding positions are not counted, as the indexer records neither. ``n_tokens`` is the number
of tokens sent to the expert, ``share`` = n_tokens / tokens read (with top-k routing the shares
of a layer sum to k). A dense model gets an empty table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.analyses.common import IndexContext
from indexer.analyses.regex import sample_contexts
from indexer.errors import InternalError
from indexer.store.schema import ExpertUsage

NAME = "experts"
TABLES = (ExpertUsage,)
BATCH_TOKENS = 8192


def run(ix: IndexContext) -> dict[type, dict[str, Any]]:
    info = ix.model.info
    columns: dict[str, list] = {c: [] for c in ExpertUsage.columns()}
    if not info.n_experts:
        return {ExpertUsage: columns}
    sequences = list(sample_contexts(ix, ix.options.sample_tokens).values())
    counts, read = route_counts(ix.model, sequences)
    for layer in range(info.n_layers):
        for expert in range(info.n_experts):
            for col, v in (("layer", layer), ("expert", expert), ("n_tokens", int(counts[layer, expert])),
                           ("n_tokens_read", read), ("share", counts[layer, expert] / max(read, 1))):
                columns[col].append(v)
    return {ExpertUsage: columns}


def route_counts(model: Any, sequences: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """[layer, expert] int64 counts of the tokens each router sent to each expert over
    ``sequences`` (BOS first; position 0 not counted), and the number of tokens counted."""
    import torch

    info = model.info
    counts = np.zeros((info.n_layers, info.n_experts), np.int64)
    mask: dict[str, torch.Tensor] = {}  # [batch * pos] bool: the tokens that count, of the batch running

    def hook_for(layer: int):
        def hook(indices: Any, hook: Any) -> None:
            keep = mask["now"]
            if indices.shape[0] != keep.shape[0]:
                raise InternalError(f"expert indices {tuple(indices.shape)} but expected [{keep.shape[0]}, top_k]")
            chosen = indices[keep].reshape(-1).long().cpu()
            counts[layer] += np.bincount(chosen.numpy(), minlength=info.n_experts)

        return hook

    hooks = [(f"blocks.{layer}.mlp.hook_expert_indices", hook_for(layer)) for layer in range(info.n_layers)]
    device = next(model.bridge.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    read, start = 0, 0
    while start < len(order):
        width = len(sequences[order[start]])
        rows = [sequences[i] for i in order[start: start + max(1, BATCH_TOKENS // max(width, 1))]]
        start += len(rows)
        tokens = np.full((len(rows), width), info.bos_token_id, np.int64)
        for r, seq in enumerate(rows):
            tokens[r, : len(seq)] = seq
        lengths = torch.tensor([len(s) for s in rows])
        pos = torch.arange(width)
        mask["now"] = ((pos[None, :] >= 1) & (pos[None, :] < lengths[:, None])).reshape(-1).to(device)
        read += int(mask["now"].sum())
        with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
            model.bridge(torch.from_numpy(tokens).to(device))
    return counts, read
