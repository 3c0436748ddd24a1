"""A one-layer model with hand-set weights whose MLP neurons have known behaviour, and a corpus
that exercises them: the answer key for the analyses (indexer.analyses).

    .venv/bin/python tests/helpers/planted.py OUT_DIR     # writes OUT_DIR/model, OUT_DIR/*.jsonl

No LayerNorm, ReLU MLP. The residual stream is one-hot: dims 0..N_CTX-1 hold the position, the
rest named features (``FEATURES``). The one attention head attends to the previous token
(query = position p, key = position k + 1, scaled so softmax is one-hot) and copies two
features of that token into ``prev_ice`` and ``prev_b64``; a second head attends evenly to
every token so far and writes the share of base64-like tokens into ``avg_b64``. The neurons:

===  ===========  ==========================================================================
0    token        ``' dog'``
1    trigram      ``' cream'`` only right after ``' ice'`` (not after ``' whipped'``)
2    base64       a base64-like fragment (no leading space, only ``[A-Za-z0-9+/=]``) right
                  after another one, stronger the more of the text so far is like that
3    digit        any token whose text ends with a digit
4    polysemantic ``' king'`` and ``' table'`` (both in both corpora)
5    illusion     ``' moon'`` (only in the web corpus) and ``' import'`` (only in code)
6    dead         bias -10
7    dense        bias +1: active on every token
===  ===========  ==========================================================================

The embedded tokenizer splits ``' ice'`` and ``' cream'`` in two; the planted tokenizer adds
them as tokens 8192 and 8193 (two BPE merges), so ``' ice cream'`` is two tokens.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import numpy as np

N_CTX = 64
D_VOCAB = 8194
NEURONS = {"token": 0, "trigram": 1, "base64": 2, "digit": 3, "polysemantic": 4, "illusion": 5, "dead": 6, "dense": 7}
FEATURES = ["dog", "ice", "cream", "b64", "digit", "king", "table", "moon", "import", "prev_ice", "prev_b64", "avg_b64",
            "open", "b64_mixed"]
D_MODEL = N_CTX + len(FEATURES) + 1
B64_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
CONFIG = dict(
    d_model=D_MODEL, d_head=N_CTX, n_heads=2, n_layers=1, n_ctx=N_CTX, d_vocab=D_VOCAB, d_mlp=len(NEURONS),
    act_fn="relu", normalization_type=None, positional_embedding_type="standard", seed=0,
)


def _dim(name: str) -> int:
    return N_CTX + FEATURES.index(name)


def write_tokenizer(folder: Path) -> None:
    """The embedded tokenizer plus ' ice' (8192) and ' cream' (8193)."""
    from indexer.inputs.data import tokenizer_dir

    spec = json.loads((tokenizer_dir() / "tokenizer.json").read_text())
    spec["model"]["vocab"].update({"Ġice": 8192, "Ġcream": 8193})
    spec["model"]["merges"] += [["Ġi", "ce"], ["Ġcre", "am"]]
    (folder / "tokenizer.json").write_text(json.dumps(spec))


def token_features(tokenizer) -> dict[str, list[int]]:
    """Feature name -> the token ids that carry it."""
    strings = tokenizer.batch_decode([[i] for i in range(D_VOCAB)], clean_up_tokenization_spaces=False)
    named = {"dog": " dog", "ice": " ice", "cream": " cream", "king": " king", "table": " table",
             "moon": " moon", "import": " import"}
    out = {f: [strings.index(s)] for f, s in named.items()}
    out["b64"] = [i for i, s in enumerate(strings) if i > 0 and s and set(s) <= B64_CHARS]
    out["digit"] = [i for i, s in enumerate(strings) if i > 0 and s and s[-1].isdigit() and s[-1].isascii()]
    out["open"] = [i for i, s in enumerate(strings) if i > 0 and s and s[-1] in "([{"]
    # base64-like fragments that words rarely are: two or more characters with a digit, an upper-case letter, + or /
    out["b64_mixed"] = [i for i in out["b64"] if len(strings[i]) >= 2 and not strings[i].islower()]
    return out


def build_bridge(tokenizer):
    """The bridge with every weight set by hand (W_out and W_U: seeded random)."""
    bridge, state = base_state(tokenizer, CONFIG)
    w_in, b_in = state["blocks.0.mlp.in.weight"], state["blocks.0.mlp.in.bias"]
    n = NEURONS
    w_in[n["token"], _dim("dog")] = 1.0
    w_in[n["trigram"], [_dim("cream"), _dim("prev_ice")]] = 2.0
    b_in[n["trigram"]] = -2.0
    set_base64_neuron(w_in, b_in, n["base64"])
    w_in[n["digit"], _dim("digit")] = 1.5
    w_in[n["polysemantic"], [_dim("king"), _dim("table")]] = 1.0
    w_in[n["illusion"], [_dim("moon"), _dim("import")]] = 1.0
    b_in[n["dead"]] = -10.0
    b_in[n["dense"]] = 0.5
    return finish(bridge, state, CONFIG)


def set_base64_neuron(w_in, b_in, neuron: int) -> None:
    """Fires on a base64-like fragment right after another one, more the more of the text so far is like that."""
    w_in[neuron, [_dim("b64"), _dim("prev_b64")]] = 1.0
    w_in[neuron, _dim("avg_b64")] = 1.0
    b_in[neuron] = -1.6


def finish(bridge, state: dict, config: dict):
    """W_out and W_U seeded random (``planted_logit_effects``), the state loaded into the bridge."""
    import torch

    gen = torch.Generator().manual_seed(0)
    state["blocks.0.mlp.out.weight"] = torch.randn(D_MODEL, config["d_mlp"], generator=gen)
    state["unembed.weight"] = torch.randn(D_VOCAB, D_MODEL, generator=gen) * 0.1
    bridge.load_state_dict(state)
    return bridge


def base_state(tokenizer, config: dict):
    """A bridge of ``config`` and its state: every weight zero except the embeddings (one-hot
    position and features) and the two attention heads; the MLP is the caller's to set."""
    import torch

    from indexer.inputs.models import build_native_bridge

    bridge = build_native_bridge(config)
    state = {k: torch.zeros_like(v) for k, v in bridge.state_dict().items()}
    for feature, ids in token_features(tokenizer).items():
        state["embed.weight"][ids, _dim(feature)] = 1.0
    state["pos_embed.weight"][:, :N_CTX] = torch.eye(N_CTX)
    # Query p . key k = 1 iff k = p - 1; 40 per unit after TL's 1/sqrt(d_head) scale: one-hot softmax.
    # Head 0 (rows 0..N_CTX-1); head 1 has zero query and key: even attention over the prefix.
    state["blocks.0.attn.q.weight"][:N_CTX, :N_CTX] = torch.eye(N_CTX) * 40 * N_CTX**0.5
    state["blocks.0.attn.k.weight"][1:N_CTX, : N_CTX - 1] = torch.eye(N_CTX - 1)
    state["blocks.0.attn.v.weight"][0, _dim("ice")] = 1.0
    state["blocks.0.attn.v.weight"][1, _dim("b64")] = 1.0
    state["blocks.0.attn.v.weight"][N_CTX, _dim("b64")] = 1.0
    state["blocks.0.attn.o.weight"][_dim("prev_ice"), 0] = 1.0
    state["blocks.0.attn.o.weight"][_dim("prev_b64"), 1] = 1.0
    state["blocks.0.attn.o.weight"][_dim("avg_b64"), N_CTX] = 1.0
    return bridge, state


def write_model(folder: Path, build=None, config: dict | None = None) -> Path:
    """The planted model in neuroscope's folder format (with the planted tokenizer); ``build``
    and ``config``: another model on the same tokenizer and embeddings (planted_patterns)."""
    from transformers import AutoTokenizer

    from indexer.inputs.data import tokenizer_dir
    from indexer.inputs.models import save_native_model

    folder.mkdir(parents=True, exist_ok=True)
    for f in tokenizer_dir().glob("*.json"):
        (folder / f.name).write_bytes(f.read_bytes())
    write_tokenizer(folder)
    bridge = (build or build_bridge)(AutoTokenizer.from_pretrained(str(folder)))
    save_native_model(folder, config or CONFIG, bridge=bridge)  # copies the embedded tokenizer again...
    write_tokenizer(folder)  # ...so put the planted one back
    return folder


B64_STRINGS = [base64.b64encode(random.Random(i).randbytes(42)).decode() for i in range(8)]
WEB = [
    "the dog ran to the house and the dog sat",
    "we had ice cream on a very good day",
    "she likes whipped cream and ice cream",
    "the king sat in the city with a crown",
    "the moon was red over the water",
    "in 1984 the king had 42 books and 7 cars",
    "my dog saw the moon and the sun",
    "a table for two and a dog",
    "token: {b64} end",
    "some ice cream for the dog",
]
CODE = [
    "from os import path\nx = 42",
    "def king(crown):\n    return crown + 7",
    "from json import dumps\ndata = 'ice cream'\nvalue = 100",
    "key = '{b64}'\nprint(key)",
    "if dog:\n    print(42)\nfrom time import sleep",
    "table = [1, 2, 3]\nrows = len(rows)",
    "name = 'whipped cream'\nfor x in range(9):\n    print(x)",
]


def write_corpora(folder: Path, n_docs: int = 60, seed: int = 0) -> dict[str, Path]:
    """Two small JSONL corpora, ``web`` and ``code``; each document joins a few template lines."""
    rng = random.Random(seed)
    out = {}
    for name, lines in (("web", WEB), ("code", CODE)):
        path = folder / f"{name}.jsonl"
        with path.open("w") as f:
            for _ in range(n_docs):
                picked = [rng.choice(lines).replace("{b64}", rng.choice(B64_STRINGS)) for _ in range(3)]
                f.write(json.dumps({"text": (". " if name == "web" else "\n").join(picked)}) + "\n")
        out[name] = path
    return out


def index_and_analyze(root: Path, model: Path, only: str | None = None, window_before: int = 16) -> Path:
    """``root/ix``: the model over the two planted corpora (mlp_post), then the analyses (all, or ``only``)."""
    from indexer.analyses import runner
    from indexer.analyses.common import Options
    from indexer.config import IndexConfig
    from indexer.run.engine import index

    corpora = write_corpora(root, n_docs=40)
    cfg = IndexConfig(model=str(model), corpus=[f"web={corpora['web']}", f"code={corpora['code']}"],
                      out=str(root / "ix"), ctx_len=64, batch_size=16, top_k=20, per_bin=5,
                      sites=("mlp_post",), window_before=window_before, window_after=4, device="cpu")
    index(cfg, progress=False)
    report = runner.analyze(root / "ix", only=only, options=Options(device="cpu", progress=False))
    assert {r["status"] for r in report.values()} == {"done"}, report
    return root / "ix"


def planted_logit_effects() -> np.ndarray:
    """W_out @ W_U of the planted model by hand ([neuron, vocab]), W_U centred over the vocab."""
    import torch

    gen = torch.Generator().manual_seed(0)
    w_out = torch.randn(D_MODEL, len(NEURONS), generator=gen).T  # [neuron, d_model]
    w_u = (torch.randn(D_VOCAB, D_MODEL, generator=gen) * 0.1).T  # [d_model, vocab]
    w_u = w_u - w_u.mean(dim=1, keepdim=True)
    return (w_out @ w_u).numpy()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(write_model(args.out / "model"), write_corpora(args.out))


if __name__ == "__main__":
    main()
