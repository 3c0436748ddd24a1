"""Head scores: how much each head behaves like a known head type, on synthetic text.

The input is BOS followed by a random token sequence repeated twice (``[BOS] r r``), the
standard probe: in the second copy an induction head attends to the token after the previous
occurrence of the current token, a duplicate-token head to that occurrence itself.
Each score is the mean attention from the relevant queries to the relevant key:

- prev_token: key ``q - 1`` for every query after the first real token;
- duplicate_token: key ``q - L`` for queries in the second copy;
- induction: key ``q - L + 1`` for queries in the second copy;
- bos: key 0 for every query after BOS.

The head wiki (``head_wiki``) adds, on the same probe:

- self_attention: key ``q`` for every query after BOS;
- mean_attn_distance: ``sum_k p[q, k] (q - k)`` averaged over every query after BOS (tokens);

and, from the weights alone (no forward pass):

- successor: how often the head's direct OV circuit ``W_E[a] W_V W_O W_U`` ranks the successor
  of an ordinal token first among the tokens of its sequence (digits, number words, letters,
  weekdays, months; single-token members only), as in Gould et al. 2023, "Successor Heads",
  but with the plain token embedding (no MLP0 in the path). Chance is ~1/len(sequence).
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


def head_scores(model: Any, layers: list[int], probe: tuple[dict[int, torch.Tensor], int] | None = None
                ) -> dict[str, np.ndarray]:
    """Columns of the head_scores table for the given layers (``probe``: ``probe_patterns``'
    result, if already run)."""
    patterns, length = probe or probe_patterns(model, layers)
    columns: dict[str, list] = {"layer": [], "head": [], "prev_token": [], "induction": [], "duplicate_token": [], "bos": []}
    for layer in layers:
        scores = scores_from_pattern(patterns[layer], length)
        n_heads = len(scores["bos"])
        columns["layer"] += [layer] * n_heads
        columns["head"] += list(range(n_heads))
        for name, values in scores.items():
            columns[name] += values.tolist()
    return {k: np.asarray(v, np.int32 if k in ("layer", "head") else np.float32) for k, v in columns.items()}


def wiki_scores_from_pattern(pattern: torch.Tensor, length: int) -> dict[str, np.ndarray]:
    """The head wiki's extra pattern scores on ``[BOS] r r`` -> per head."""
    p = pattern.float().mean(dim=0)  # [head, q, k]
    q = torch.arange(1, p.shape[1])
    distance = (q[:, None] - torch.arange(p.shape[2])[None, :]).clamp_min(0).float()  # [q, k]
    return {
        "self_attention": p[:, q, q].mean(-1).numpy(),
        "mean_attn_distance": (p[:, q, :] * distance).sum(-1).mean(-1).numpy(),
    }


SUCCESSOR_SEQUENCES = (
    [str(i) for i in range(10)],
    "one two three four five six seven eight nine ten".split(),
    "first second third fourth fifth sixth seventh eighth ninth tenth".split(),
    [chr(c) for c in range(ord("A"), ord("Z") + 1)],
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(),
    "January February March April May June July August September October November December".split(),
)


def successor_token_runs(tokenizer: Any, d_vocab: int) -> list[list[int]]:
    """Runs of >= 3 consecutive members of each ordinal sequence that are single tokens
    (tried with and without a leading space), as token ids."""
    runs = []
    for seq in SUCCESSOR_SEQUENCES:
        for prefix in ("", " "):
            run: list[int] = []
            for word in seq + [None]:
                ids = tokenizer.encode(prefix + word, add_special_tokens=False) if word is not None else []
                if len(ids) == 1 and ids[0] < d_vocab:
                    run.append(ids[0])
                    continue
                if len(run) >= 3:
                    runs.append(run)
                run = []
    return runs


def successor_scores(model: Any, layers: list[int]) -> dict[int, np.ndarray]:
    """Per layer, per head: fraction of ordinal tokens whose successor the head's direct OV
    circuit ranks first among its sequence (NaN if the tokenizer has no such sequence)."""
    bridge = model.bridge
    runs = successor_token_runs(model.tokenizer, model.info.d_vocab)
    out = {}
    with torch.inference_mode():
        w_e = bridge.W_E.detach().float().cpu()
        w_u = bridge.W_U.detach().float().cpu()
        for layer in layers:
            attn = bridge.blocks[layer].attn
            w_v, w_o = attn.W_V.detach().float().cpu(), attn.W_O.detach().float().cpu()
            n_heads = w_o.shape[0]
            if w_v.shape[0] != n_heads:
                w_v = w_v.repeat_interleave(n_heads // w_v.shape[0], dim=0)
            hits, total = np.zeros(n_heads), 0
            for run in runs:
                ids = torch.tensor(run)
                logits = torch.einsum("tm,hmd,hdn,nu->htu", w_e[ids], w_v, w_o, w_u[:, ids])  # [head, src, cand]
                best = logits[:, :-1].argmax(-1)  # the last member has no successor
                hits += (best == torch.arange(1, len(run))[None, :]).sum(-1).numpy()
                total += len(run) - 1
            out[layer] = hits / total if total else np.full(n_heads, np.nan)
    return out


def head_wiki(model: Any, layers: list[int]) -> dict[str, np.ndarray]:
    """Columns of the head_wiki table: the head scores plus the wiki's extra scores, from one
    pass over the probe (on the GPT-2-small shape a pass is about 4 s of finalize on a CPU)."""
    patterns, length = probe = probe_patterns(model, layers)
    columns = head_scores(model, layers, probe)
    successor = successor_scores(model, layers)
    extra: dict[str, list] = {"self_attention": [], "mean_attn_distance": [], "successor": []}
    for layer in layers:
        for name, values in wiki_scores_from_pattern(patterns[layer], length).items():
            extra[name] += values.tolist()
        extra["successor"] += successor[layer].tolist()
    return {**columns, **{k: np.asarray(v, np.float32) for k, v in extra.items()}}


def probe_patterns(model: Any, layers: list[int]) -> tuple[dict[int, torch.Tensor], int]:
    """Attention patterns [batch, head, q, k] of the given layers on ``[BOS] r r``, and len(r)."""
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
    return patterns, length
