"""Train the embedded demo SAE (data/saes/<name>/): a top-k SAE on one of toy-1l's activations,
written in SAELens format (cfg.json + sae_weights.safetensors) with a card.

Run from the repository root (a couple of CPU minutes):

    nice .venv/bin/python scripts/train_demo_sae.py

Data: the embedded corpora (code and prose, half each) read as the indexer reads them
(``[BOS] + up to ctx_len-1 tokens of one document``, seeded shuffle), the hooked activation at
every non-BOS position (BOS's activation is an outlier no SAE needs to spend latents on).
The last ``--eval-tokens`` tokens, from documents not trained on, measure L0, the fraction of
variance explained (FVE = 1 - Σ‖x - x̂‖² / Σ‖x - mean‖²) and the latents that never fire.

Training: Adam on the mean squared error; W_dec rows kept at unit norm; W_enc initialised as
W_dec.T, b_dec as the mean activation; no auxiliary loss (dead latents are reported as is).
Writes cfg.json, sae_weights.safetensors, card.json and README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="toy-1l")
    p.add_argument("--hook", default="blocks.0.hook_mlp_out", help="TransformerLens hook name (the SAE's hook_name)")
    p.add_argument("--name", default="toy-1l-mlp-out")
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--train-tokens", type=int, default=200_000)
    p.add_argument("--eval-tokens", type=int, default=20_000)
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "data" / "saes"))
    return p.parse_args(argv)


def activations(model, hook: str, corpus: str, tokens: int, ctx_len: int, seed: int) -> np.ndarray:
    """[n, d] float32: the hook's values at every non-BOS position of the first contexts."""
    from indexer.forward.runner import make_batch
    from indexer.inputs.contexts import ContextStream, batches
    from indexer.inputs.corpus import parse_corpus_spec

    stream = ContextStream([parse_corpus_spec(corpus)], model.tokenizer, model.info.bos_token_id, ctx_len, tokens,
                           order="shuffle", seed=seed)
    out = []
    for group in batches(iter(stream), 16):
        batch = make_batch(group, model.info.bos_token_id, "cpu", ctx_len)
        with torch.inference_mode():
            _, cache = model.bridge.run_with_cache(batch.tokens, names_filter=[hook])
        acts = cache[hook].float()
        for row, ctx in enumerate(group):
            out.append(acts[row, 1:len(ctx.token_ids)].numpy())
    return np.concatenate(out)


def encode(x: torch.Tensor, w: dict, k: int) -> torch.Tensor:
    h = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    vals, idx = torch.topk(h, k, dim=-1)
    return torch.zeros_like(h).scatter(-1, idx, torch.relu(vals))


def train(x: np.ndarray, args: argparse.Namespace) -> tuple[dict, list[float]]:
    torch.manual_seed(args.seed)
    data = torch.from_numpy(x)
    d_in = data.shape[1]
    w_dec = torch.randn(args.d_sae, d_in)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    w = {"W_enc": w_dec.T.clone().requires_grad_(), "b_enc": torch.zeros(args.d_sae, requires_grad=True),
         "W_dec": w_dec.requires_grad_(), "b_dec": data.mean(0).clone().requires_grad_()}
    opt = torch.optim.Adam(w.values(), lr=args.lr)
    losses = []
    for epoch in range(args.epochs):
        perm = torch.randperm(len(data))
        for start in range(0, len(data), args.batch_size):
            xb = data[perm[start:start + args.batch_size]]
            xh = encode(xb, w, args.k) @ w["W_dec"] + w["b_dec"]
            loss = ((xh - xb) ** 2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                w["W_dec"] /= w["W_dec"].norm(dim=-1, keepdim=True)
            losses.append(float(loss))
        print(f"epoch {epoch}: loss {np.mean(losses[-20:]):.4f}", file=sys.stderr)
    return {n: t.detach().contiguous() for n, t in w.items()}, losses


def evaluate(x: np.ndarray, w: dict, k: int) -> dict:
    data = torch.from_numpy(x)
    with torch.no_grad():
        f = encode(data, w, k)
        xh = f @ w["W_dec"] + w["b_dec"]
    resid = ((data - xh) ** 2).sum()
    total = ((data - data.mean(0)) ** 2).sum()
    fired = (f > 0).sum(0)
    return {"eval_tokens": len(x), "l0": float((f > 0).sum(-1).float().mean()), "fve": float(1 - resid / total),
            "dead_latents": int((fired == 0).sum()), "dead_fraction": float((fired == 0).float().mean())}


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file

    from indexer.inputs.models import load_model

    args = parse_args(argv)
    torch.set_num_threads(2)
    started = time.time()
    model = load_model(args.model)
    half = (args.train_tokens + args.eval_tokens) // 2
    x = np.concatenate([activations(model, args.hook, c, half, args.ctx_len, args.seed) for c in ("code", "prose")])
    rng = np.random.default_rng(args.seed)
    # eval = the last contexts of each corpus (other documents than the training ones)
    n_eval = args.eval_tokens // 2
    per = len(x) // 2
    eval_idx = np.r_[per - n_eval:per, len(x) - n_eval:len(x)]
    train_idx = np.setdiff1d(np.arange(len(x)), eval_idx)
    rng.shuffle(train_idx)
    weights, losses = train(x[train_idx], args)
    metrics = evaluate(x[eval_idx], weights, args.k)
    folder = Path(args.out) / args.name
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": "topk", "d_in": int(x.shape[1]), "d_sae": args.d_sae, "k": args.k, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "rescale_acts_by_decoder_norm": False,
           "metadata": {"model_name": args.model, "hook_name": args.hook, "context_size": args.ctx_len,
                        "prepend_bos": True, "dataset_path": "neuroscope embedded corpora: code, prose",
                        "sae_lens_version": "6.18.0", "trained_by": "neuroscope scripts/train_demo_sae.py"}}
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    card = {"model": args.model, "hook": args.hook, "architecture": "topk", "d_in": int(x.shape[1]), "d_sae": args.d_sae,
            "k": args.k, "train_tokens": int(len(train_idx)), "epochs": args.epochs, "batch_size": args.batch_size,
            "lr": args.lr, "seed": args.seed, "final_train_loss": float(np.mean(losses[-20:])), **metrics,
            "seconds": round(time.time() - started, 1), "torch": torch.__version__}
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
