"""What scripts/train_toy_model.py measures while it trains: the held-out loss per corpus and the
head scores on held-out ``[BOS] r r`` (the induction-head phase change)."""

from __future__ import annotations

from toy_model_data import IGNORE, make_batch


def evaluate(bridge, eval_sets: dict, batch_size: int, bos: int) -> dict[str, float]:
    """Mean held-out loss (nats/token) per corpus, fp32, no autocast."""
    import torch
    import torch.nn.functional as F

    was_training = bridge.training
    bridge.eval()
    out = {}
    with torch.no_grad():
        for name, chunks in eval_sets.items():
            total, n = 0.0, 0
            for i in range(0, len(chunks), batch_size):
                tokens, targets = make_batch(chunks[i : i + batch_size], bos)
                logits = bridge(tokens).float()
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                    ignore_index=IGNORE, reduction="sum",
                )
                total += loss.item()
                n += int((targets != IGNORE).sum())
            out[name] = total / n
    bridge.train(was_training)
    return out


def head_probe(bridge, d_vocab: int, bos: int, n_ctx: int) -> dict:
    """Head scores on held-out ``[BOS] r r`` (indexer.forward.head_scores): per-head lists and the
    best head's induction / previous-token scores."""
    import torch

    from indexer.forward.head_scores import repeated_tokens, scores_from_pattern

    tokens = repeated_tokens(d_vocab, bos, n_ctx)
    length = (tokens.shape[1] - 1) // 2
    was_training = bridge.training
    bridge.eval()
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    bridge.train(was_training)
    out: dict = {}
    for layer in range(bridge.cfg.n_layers):
        for name, values in scores_from_pattern(cache[f"blocks.{layer}.attn.hook_pattern"], length).items():
            out.setdefault(name, []).append([round(float(v), 4) for v in values])
    out["induction_max"] = max(max(r) for r in out["induction"])
    out["prev_token_max"] = max(max(r) for r in out["prev_token"])
    return out
