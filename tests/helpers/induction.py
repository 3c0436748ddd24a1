"""A hand-built induction circuit: a 2-layer attention-only model with hand-set weights, and a
corpus that exercises it.

Residual stream (d_model 384, no LayerNorm, no MLP):

- ``T`` (dims 0..127): the token. Tokens of the fixture corpus get exactly orthonormal basis
  vectors; every other token a random unit vector (so the random-token head-score probe works
  too, with small cross-talk); BOS gets zero.
- ``P`` (dims 128..191): the position, one-hot (n_ctx 64).
- ``PT`` (dims 192..319): the previous token, written by the previous-token head.

Heads (3 per layer, d_head 128; heads 1 and 2 of each layer have all-zero weights, so they
attend uniformly and write nothing):

- L0H0, previous-token head: query ``P[q]``, key ``P[k]`` shifted by one, so the score is
  high exactly when ``k = q - 1``; value/output copy ``T`` into ``PT``.
- L1H0, induction head (K-composition through L0H0): query reads ``T``, key reads ``PT``, so
  position ``q`` attends to the keys whose previous token equals its own token: the token
  after the previous occurrence of the current token. Value reads ``T``; output writes it
  back into ``T`` (the unembedding is zero: the model predicts nothing, it only attends).

The corpus: each document is a run of distinct single-token words, then the same run again,
then fresh words. Induction applies exactly at positions whose token occurred earlier in
the context.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

D_T, N_CTX, D_HEAD, N_HEADS = 128, 64, 128, 3
T, P, PT = slice(0, 128), slice(128, 192), slice(192, 320)
D_MODEL = 384
PREV_SCALE = 20.0  # logit of the previous-token key over the others
INDUCTION_SCALE = 14.0  # logit of a matching key over a non-matching one (orthogonal tokens)
PREV_HEAD = (0, 0)
INDUCTION_HEAD = (1, 0)

CONFIG = dict(
    model_name="induction-2l", d_model=D_MODEL, d_head=D_HEAD, n_heads=N_HEADS, n_layers=2, n_ctx=N_CTX,
    d_vocab=8192, d_mlp=None, act_fn=None, normalization_type=None, attn_only=True,
    positional_embedding_type="standard", seed=0, default_prepend_bos=True, tokenizer_prepends_bos=False,
    tokenizer_appends_eos=False,
)

WORDS = (
    "the cat dog sun moon tree house car book door water fire stone river hill road king queen "
    "bird fish ship city town field horse apple bread milk green blue red black white small "
    "great old new long high light night day year man child hand head eye face word name time "
    "world life work place game line music power money story party table heart voice bank"
).split()


def corpus_token_ids(tokenizer) -> list[int]:
    """Ids of the fixture words that are one token each (with their leading space)."""
    ids = []
    for word in WORDS:
        enc = tokenizer.encode(" " + word, add_special_tokens=False)
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
    return ids


def write_induction_corpus(path: Path, tokenizer, n_docs: int = 120, seed: int = 0) -> Path:
    """Documents ``a b c ... a b c ... x y``: a run of distinct words, the run again, fresh words."""
    words = [tokenizer.decode([i]) for i in corpus_token_ids(tokenizer)]
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n_docs):
            n_run, n_fresh = int(rng.integers(8, 20)), int(rng.integers(4, 12))
            order = rng.permutation(len(words))
            run = [words[i] for i in order[:n_run]]
            fresh = [words[i] for i in order[n_run : n_run + n_fresh]]
            f.write(json.dumps({"text": "".join(run + run + fresh)}) + "\n")
    return path


def induction_weights(corpus_ids: list[int], d_vocab: int = 8192, seed: int = 0) -> dict[str, np.ndarray]:
    """The state dict (TL-native TransformerBridge key names) of the planted circuit."""
    rng = np.random.default_rng(seed)
    assert len(corpus_ids) <= D_T, "more fixture tokens than token dimensions"
    embed = np.zeros((d_vocab, D_MODEL), np.float32)
    tokens = rng.normal(size=(d_vocab, D_T))
    embed[:, T] = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    embed[corpus_ids, T] = np.eye(D_T)[: len(corpus_ids)]  # exactly orthogonal
    embed[0] = 0.0  # BOS (id 0): no token content, so it never matches and has no value
    pos = np.zeros((N_CTX, D_MODEL), np.float32)
    pos[:, P] = np.eye(N_CTX)
    scale = np.sqrt(D_HEAD)  # TL divides attention scores by sqrt(d_head)

    def zeros(*shape):
        return np.zeros(shape, np.float32)

    # Per-head matrices in TL's orientation: W_Q/W_K/W_V [head, d_model, d_head], W_O [head, d_head, d_model].
    w = {layer: {k: zeros(N_HEADS, D_MODEL, D_HEAD) for k in "QKV"} | {"O": zeros(N_HEADS, D_HEAD, D_MODEL)}
         for layer in (0, 1)}
    # L0H0: q = PREV_SCALE * onehot(q), k = onehot(k + 1) -> score PREV_SCALE iff k = q - 1.
    h = PREV_HEAD[1]
    w[0]["Q"][h, P, :N_CTX] = np.eye(N_CTX) * PREV_SCALE * scale
    w[0]["K"][h, P, :N_CTX] = np.eye(N_CTX, k=1)  # P[k] -> e[k + 1]
    w[0]["V"][h, T, :D_T] = np.eye(D_T)
    w[0]["O"][h, :D_T, PT] = np.eye(D_T)
    # L1H0: q = INDUCTION_SCALE * token(q), k = previous token(k) -> score high iff they match.
    h = INDUCTION_HEAD[1]
    w[1]["Q"][h, T, :D_T] = np.eye(D_T) * INDUCTION_SCALE * scale
    w[1]["K"][h, PT, :D_T] = np.eye(D_T)
    w[1]["V"][h, T, :D_T] = np.eye(D_T)
    w[1]["O"][h, :D_T, T] = np.eye(D_T)

    state = {"embed.weight": embed, "pos_embed.weight": pos,
             "unembed.weight": zeros(d_vocab, D_MODEL), "unembed.bias": zeros(d_vocab)}
    for layer in (0, 1):
        for name in "qkv":
            m = w[layer][name.upper()]  # [head, d_model, d_head] -> Linear weight [head*d_head, d_model]
            state[f"blocks.{layer}.attn.{name}.weight"] = np.ascontiguousarray(m.transpose(0, 2, 1).reshape(-1, D_MODEL))
            state[f"blocks.{layer}.attn.{name}.bias"] = zeros(N_HEADS * D_HEAD)
        o = w[layer]["O"]  # [head, d_head, d_model] -> Linear weight [d_model, head*d_head]
        state[f"blocks.{layer}.attn.o.weight"] = np.ascontiguousarray(o.reshape(-1, D_MODEL).T)
        state[f"blocks.{layer}.attn.o.bias"] = zeros(D_MODEL)
    return state


def write_induction_model(folder: Path) -> Path:
    """The planted circuit in neuroscope's folder format (loadable as ``--model FOLDER``)."""
    import torch

    from indexer.inputs.models import build_native_bridge, load_tokenizer, save_native_model, tokenizer_dir

    ids = corpus_token_ids(load_tokenizer(tokenizer_dir()))
    bridge = build_native_bridge(CONFIG)
    state = {k: torch.from_numpy(v) for k, v in induction_weights(ids).items()}
    bridge.load_state_dict(state, strict=True)
    return save_native_model(folder, CONFIG, bridge)


def induction_applies(token_ids: list[int], pos: int) -> bool:
    """Whether the token at ``pos`` occurred earlier in the context (after BOS): then there is
    a continuation to attend to."""
    return token_ids[pos] in token_ids[1:pos]
