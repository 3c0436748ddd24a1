"""Planted pattern neurons beside dense random ones: the answer key for the pattern scores
(``base64-neurons``, ``pattern-neurons NAME``, ``regex-neurons``; indexer/pattern_score.py).

The planted model's tokenizer, embeddings and attention (tests/helpers/planted.py), and an MLP of

===  ============  =========================================================================
0    base64        fires on some fragments of a base64 run (two or more base64 characters,
                   not all lower-case, right after another base64-like fragment), never outside
                   a run: the pattern matches every token of the run, so its precision is small
1    digits        any token whose text ends with a digit
2    open_bracket  any token whose text ends with ``(``, ``[`` or ``{``
3..  dense         ``N_DENSE`` neurons with seeded random weights on every position and
                   feature dimension and a positive bias: active on most tokens, their largest
                   values wherever their random weights happen to peak (base64 runs included)
===  ============  =========================================================================
"""

from __future__ import annotations

from pathlib import Path

from helpers import planted

PATTERNS = {"base64": 0, "digits": 1, "open_bracket": 2}
N_DENSE = 10
CONFIG = {**planted.CONFIG, "d_mlp": len(PATTERNS) + N_DENSE}


def build_bridge(tokenizer):
    import torch

    bridge, state = planted.base_state(tokenizer, CONFIG)
    w_in, b_in = state["blocks.0.mlp.in.weight"], state["blocks.0.mlp.in.bias"]
    b64 = PATTERNS["base64"]
    w_in[b64, [planted._dim("b64_mixed"), planted._dim("prev_b64")]] = 1.0
    b_in[b64] = -1.5
    w_in[PATTERNS["digits"], planted._dim("digit")] = 1.5
    w_in[PATTERNS["open_bracket"], planted._dim("open")] = 1.5
    gen = torch.Generator().manual_seed(1)
    dense = slice(len(PATTERNS), len(PATTERNS) + N_DENSE)
    w_in[dense, : planted.N_CTX] = torch.randn(N_DENSE, planted.N_CTX, generator=gen)  # by position
    w_in[dense, planted.N_CTX:] = 0.5 * torch.randn(N_DENSE, len(planted.FEATURES) + 1, generator=gen)  # by feature
    b_in[dense] = 1.5
    return planted.finish(bridge, state, CONFIG)


def write_model(folder: Path) -> Path:
    return planted.write_model(folder, build=build_bridge, config=CONFIG)
