"""Train one of the embedded toy models (data/models/<name>/) on the embedded corpora.

Run from the repository root, e.g.:

    .venv/bin/python scripts/train_toy_model.py --name toy-1l --layers 1 --act-fn gelu \
        --tokens 6000000 --seed 0

The model is a TransformerLens-native TransformerBridge (``indexer.models.build_native_bridge``):
d_model 256, 4 heads of 64, d_mlp 1024, n_ctx 256, LayerNorm, learned positional embeddings,
untied unembedding, vocabulary = the embedded byte-level BPE tokenizer (8192 tokens).

Training data has exactly the form the indexer feeds: ``[BOS] + up to ctx_len-1 tokens of ONE
document``; a long document is cut into consecutive chunks, each starting with BOS; chunks with
fewer than ``--min-chunk`` document tokens are dropped; short chunks are right-padded and the
padding is masked out of the loss (causal attention means padding never affects real positions).
Chunks are drawn ~20% from the code corpus and ~80% from the prose corpus. A deterministic 2% of
the documents of each corpus (sha256 of "<corpus>:<row index>" mod 50 == 0) is held out and never
trained on; a fixed set of held-out chunks (independent of --seed) measures the held-out loss.

Writes data/models/<name>/: bridge_config.json, model.safetensors, tokenizer files,
training_log.json, loss.png, README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from toy_model_data import (
    CORPORA, CORPORA_DIR, EVAL_SEED, HOLDOUT_MOD, IGNORE, ROOT, TOKENIZER_DIR, ChunkStream, log, make_batch,
    provenance_entropies, repeated_chunk, sha256_file, split_corpus, unigram_entropy_nats,
)
from toy_model_eval import evaluate, head_probe
from toy_model_outputs import save_outputs

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="model name = folder under --out")
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--act-fn", default="gelu", choices=["gelu", "solu_ln"])
    p.add_argument("--tokens", type=float, default=6e6, help="training tokens (real, non-pad)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--ctx-len", type=int, default=256, help="context length incl. BOS (= n_ctx)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1, help="cosine floor, fraction of --lr")
    p.add_argument("--warmup-frac", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--code-frac", type=float, default=0.2, help="fraction of chunks from code")
    p.add_argument("--min-chunk", type=int, default=32, help="drop chunks with fewer doc tokens")
    p.add_argument("--eval-chunks", type=int, default=200, help="held-out chunks (half per corpus)")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast")
    p.add_argument("--out", default=str(ROOT / "data" / "models"))
    p.add_argument("--cache-dir", default="/tmp/neuroscope_token_cache",
                   help="cache of the tokenized corpora (keyed by file hashes)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--attn-only", action="store_true", help="no MLPs (an attention-only model)")
    p.add_argument("--init-from", default=None,
                   help="continue from this model folder's model.safetensors (same architecture)")
    p.add_argument("--n-heads", type=int, default=4, help="heads per layer (d_head = d_model / n_heads)")
    p.add_argument("--d-model", type=int, default=256, help="residual stream width")
    p.add_argument("--rotary", action="store_true",
                   help="rotary positional embeddings on every head dimension instead of learned "
                        "absolute ones: a previous-token head then works at every position")
    p.add_argument("--repeat-frac", type=float, default=0.0,
                   help="fraction of contexts that are synthetic repeats: half [BOS] r r with r "
                        "random tokens, half a training span repeated (teaches induction)")
    p.add_argument("--repeat-len-max", type=int, default=None,
                   help="longest repeated segment r of a synthetic repeat (default: half the context); "
                        "short segments give many more optimizer steps per token, which is what "
                        "makes induction heads form on a CPU budget")
    p.add_argument("--repeat-random-frac", type=float, default=0.5,
                   help="fraction of the synthetic repeats made of random tokens (the rest repeat a training span)")
    p.add_argument("--repeat-vocab", type=int, default=None,
                   help="random repeats draw token ids from 1..N (default: the whole vocabulary); a "
                        "small N makes each id recur often, so the copying circuit forms sooner")
    p.add_argument("--repeat-shuffle-max", type=int, default=None,
                   help="the second copy of a synthetic repeat is the first cut into pieces of 2..N "
                        "tokens in a random order: only the token right after an earlier occurrence "
                        "predicts the next one, so induction forms on the previous token and not on "
                        "a token further back (which rotary models otherwise find as readily)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default: --tokens / the expected tokens per step)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- model


def model_config(args: argparse.Namespace, d_vocab: int) -> dict:
    """The exact dict `indexer.models.build_native_bridge` (TransformerBridgeConfig(**d)) takes."""
    return {
        "model_name": args.name,
        "n_layers": args.layers,
        "d_model": args.d_model,
        "n_heads": args.n_heads,
        "d_head": args.d_model // args.n_heads,
        "d_mlp": 1024,
        "n_ctx": args.ctx_len,
        "d_vocab": d_vocab,
        "act_fn": args.act_fn,
        "normalization_type": "LN",
        "eps": 1e-5,
        "positional_embedding_type": "rotary" if args.rotary else "standard",
        **({"rotary_dim": args.d_model // args.n_heads} if args.rotary else {}),
        "attn_only": bool(args.attn_only),
        "gated_mlp": False,
        "final_rms": False,
        "tie_word_embeddings": False,
        "init_mode": "gpt2",
        "seed": args.seed,
        "default_prepend_bos": True,
        # the tokenizer does not add BOS itself (add_bos_token false): bridge.to_tokens
        # must prepend it manually
        "tokenizer_prepends_bos": False,
        "tokenizer_appends_eos": False,
    }


def lr_at(step: int, total: int, warmup: int, peak: float, floor_frac: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (floor_frac + (1 - floor_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from indexer.inputs.models import build_native_bridge

    torch.set_num_threads(args.threads)
    t_start = time.time()
    out_dir = Path(args.out) / args.name

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    bos = tokenizer.bos_token_id
    assert bos == 0, f"expected BOS id 0, got {bos}"
    d_vocab = len(tokenizer)
    config = model_config(args, d_vocab)
    prov_path = CORPORA_DIR / "provenance.json"
    if prov_path.is_file():
        want = json.loads(prov_path.read_text()).get("tokenizer_sha256")
        have = sha256_file(TOKENIZER_DIR / "tokenizer.json")
        if want and want != have:
            log(f"WARNING: data/tokenizer/tokenizer.json (sha256 {have[:12]}) is not the tokenizer "
                f"provenance.json was computed with ({want[:12]})")

    # ---- data
    docs: dict[str, list[np.ndarray]] = {}
    train_chunks: dict[str, list[np.ndarray]] = {}
    eval_sets: dict[str, list[np.ndarray]] = {}
    data_info: dict[str, dict] = {}
    for corpus in CORPORA:
        docs[corpus], train_chunks[corpus], eval_sets[corpus], data_info[corpus] = split_corpus(
            corpus, tokenizer, None if args.no_cache else Path(args.cache_dir), args.ctx_len, args.min_chunk,
            args.eval_chunks // 2)

    weights = {"code": args.code_frac, "prose": 1 - args.code_frac}
    ent = unigram_entropy_nats(docs, weights, d_vocab)
    prov = provenance_entropies()
    unigram = {
        "code_nats": prov.get("code_nats", ent["code"]),
        "prose_nats": prov.get("prose_nats", ent["prose"]),
        "mix_nats": prov.get("mix_nats", ent["mix"]),
        "mix_weights": prov.get("mix_weights", weights),
        "source": "data/corpora/provenance.json" if "mix_nats" in prov else "computed here",
        "computed_on_training_documents": {
            **{f"{k}_nats": round(v, 4) for k, v in ent.items()},
            "note": "this run's training documents, BOS excluded; mix = entropy of "
                    f"{weights['code']:.2f}*p_code + {weights['prose']:.2f}*p_prose",
        },
    }
    log(f"unigram entropy (nats): provenance.json {prov}; computed on training docs: "
        f"code {ent['code']:.4f} prose {ent['prose']:.4f} mix {ent['mix']:.4f}")

    mean_len = {c: np.mean([len(x) for x in train_chunks[c]]) for c in CORPORA}
    exp_tokens_per_batch = args.batch_size * sum(weights[c] * mean_len[c] for c in CORPORA)
    total_steps = args.steps or max(1, math.ceil(args.tokens / exp_tokens_per_batch))
    warmup = max(1, min(200, round(args.warmup_frac * total_steps)))
    log(f"{total_steps} steps of {args.batch_size} contexts (~{exp_tokens_per_batch:.0f} "
        f"tokens/step), warmup {warmup}, lr {args.lr}")

    # ---- model
    bridge = build_native_bridge(config)
    if args.init_from:
        from safetensors.torch import load_file

        bridge.load_state_dict(load_file(str(Path(args.init_from) / "model.safetensors")), strict=True)
        log(f"initialised from {args.init_from}")
    bridge.train()
    n_params = sum(p.numel() for p in bridge.parameters())
    decay = [p for p in bridge.parameters() if p.ndim >= 2]
    no_decay = [p for p in bridge.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    log(f"model: {n_params:,} parameters, {args.layers} layer(s), act_fn {args.act_fn}")

    rng = np.random.default_rng(args.seed)
    streams = {c: ChunkStream(train_chunks[c], np.random.default_rng([args.seed, i]))
               for i, c in enumerate(CORPORA)}
    train_log, heldout_log = [], []
    tokens_seen = 0
    step0 = 0  # steps and tokens of the run this one continues (--init-from), for the curves
    prior = None
    if args.init_from and (Path(args.init_from) / "training_log.json").is_file():
        prior = json.loads((Path(args.init_from) / "training_log.json").read_text())
        train_log, heldout_log = list(prior["train_loss"]), list(prior["heldout_loss"])
        tokens_seen, step0 = int(prior["tokens_seen"]), int(prior["steps"])
    tokens_start = tokens_seen
    tokens_by_corpus = {c: 0 for c in (*CORPORA, "repeat")}
    chunks_by_corpus = {c: 0 for c in (*CORPORA, "repeat")}
    window_loss, window_n = 0.0, 0
    t_train = time.time()
    t_window, tok_window = time.time(), 0

    eval_seconds = 0.0

    def run_eval(step: int) -> dict:
        nonlocal eval_seconds
        t0 = time.time()
        r = evaluate(bridge, eval_sets, args.batch_size, bos)
        r["mix"] = sum(weights[c] * r[c] for c in CORPORA)
        heads = head_probe(bridge, d_vocab, bos, args.ctx_len)
        heldout_log.append({"step": step0 + step, "tokens": tokens_seen, "heldout_loss": r["mix"],
                            "code": r["code"], "prose": r["prose"],
                            "induction_max": heads["induction_max"],
                            "prev_token_max": heads["prev_token_max"], "head_scores": heads})
        log(f"held-out @ step {step}: mix {r['mix']:.4f} code {r['code']:.4f} "
            f"prose {r['prose']:.4f} | best induction {heads['induction_max']:.3f} "
            f"prev-token {heads['prev_token_max']:.3f} ({time.time() - t0:.1f}s)")
        eval_seconds += time.time() - t0
        return r

    if prior is None:
        run_eval(0)
    eval_seconds = 0.0
    t_train = t_window = time.time()
    for step in range(total_steps):
        lr = lr_at(step, total_steps, warmup, args.lr, args.min_lr_frac)
        for g in opt.param_groups:
            g["lr"] = lr
        from_code = rng.random(args.batch_size) < args.code_frac
        names = ["code" if fc else "prose" for fc in from_code]
        chunks = [streams[n].next() for n in names]
        for i in np.flatnonzero(rng.random(args.batch_size) < args.repeat_frac):
            chunks[i] = repeated_chunk(rng, streams[names[i]], d_vocab, args.ctx_len - 1, args.repeat_len_max,
                                       args.repeat_random_frac, args.repeat_vocab, args.repeat_shuffle_max)
            names[i] = "repeat"
        tokens, targets = make_batch(chunks, bos)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.no_bf16):
            # autocast runs cross_entropy in fp32
            logits = bridge(tokens)
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1),
                                   ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bridge.parameters(), args.grad_clip)
        opt.step()

        n_tok = int((targets != IGNORE).sum())
        tokens_seen += n_tok
        tok_window += n_tok
        for n, c in zip(names, chunks):
            tokens_by_corpus[n] += len(c)
            chunks_by_corpus[n] += 1
        lv = loss.item()
        if not math.isfinite(lv):
            raise RuntimeError(f"non-finite loss at step {step}: {lv}")
        window_loss += lv
        window_n += 1
        done = step + 1
        if done % args.log_every == 0 or done == total_steps:
            now = time.time()
            rate = tok_window / (now - t_window)
            busy = now - t_train - eval_seconds
            avg_rate = (tokens_seen - tokens_start) / busy
            n_evals_left = (total_steps - 1) // args.eval_every - done // args.eval_every + 1
            eval_each = eval_seconds / max(1, len(heldout_log) - 1) if len(heldout_log) > 1 else 8.0
            eta = (total_steps - done) * busy / done + n_evals_left * eval_each
            train_log.append({"step": step0 + done, "tokens": tokens_seen,
                              "train_loss": window_loss / window_n, "lr": lr})
            log(f"step {done}/{total_steps} tokens {tokens_seen:,} loss {window_loss / window_n:.4f} "
                f"lr {lr:.2e} | {rate:,.0f} tok/s (avg {avg_rate:,.0f}) | "
                f"elapsed {(now - t_train) / 60:.1f} min, ETA {eta / 60:.1f} min")
            window_loss, window_n = 0.0, 0
            t_window, tok_window = now, 0
        if done % args.eval_every == 0 and done != total_steps:
            t_e = time.time()
            run_eval(done)
            t_window += time.time() - t_e  # keep eval time out of the throughput figure

    train_seconds = time.time() - t_train - eval_seconds  # optimisation steps only
    final = run_eval(total_steps)
    final_heads = heldout_log[-1]["head_scores"]
    wall = time.time() - t_start

    versions = {}
    for pkg in ("torch", "transformer-lens", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    log_data = {
        "name": args.name,
        "config": config,
        "seed": args.seed,
        "args": vars(args),
        "continued_from": None if prior is None else {
            "folder": str(args.init_from), "steps": prior["steps"], "tokens_seen": prior["tokens_seen"],
            "args": prior["args"], "continued_from": prior.get("continued_from")},
        "n_params": n_params,
        "batch_size": args.batch_size,
        "ctx_len": args.ctx_len,
        "code_frac": args.code_frac,
        "repeat_frac": args.repeat_frac,
        "final_head_scores": final_heads,
        "precision": "fp32 weights, bf16 autocast" if not args.no_bf16 else "fp32",
        "optimizer": {"name": "AdamW", "lr": args.lr, "betas": [0.9, 0.95],
                      "weight_decay": args.weight_decay, "weight_decay_on": "params with ndim >= 2",
                      "grad_clip": args.grad_clip, "warmup_steps": warmup,
                      "schedule": f"linear warmup, cosine decay to {args.min_lr_frac} x lr"},
        "steps": step0 + total_steps,
        "tokens_target": int(args.tokens),
        "tokens_seen": tokens_seen,
        "tokens_seen_by_corpus": tokens_by_corpus,
        "chunks_seen_by_corpus": chunks_by_corpus,
        "epochs_by_corpus": {c: round(streams[c].epochs, 3) for c in CORPORA},
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "wall_seconds": round(wall, 1),
        "tokens_per_second": round((tokens_seen - tokens_start) / train_seconds, 1),
        "train_loss": train_log,
        "heldout_loss": heldout_log,
        "final_heldout_loss": {"code": final["code"], "prose": final["prose"], "mix": final["mix"],
                               "mix_weights": weights},
        "heldout_rule": f"sha256('<corpus>:<row index>') mod {HOLDOUT_MOD} == 0 (first 8 bytes, "
                        f"big-endian); eval = up to {args.eval_chunks // 2} chunks per corpus "
                        f"sampled with seed {EVAL_SEED}",
        "data": data_info,
        "inputs_sha256": {
            "tokenizer.json": sha256_file(TOKENIZER_DIR / "tokenizer.json"),
            **{f"{c}.parquet": sha256_file(CORPORA_DIR / f"{c}.parquet") for c in CORPORA},
        },
        "unigram_entropy": unigram,
        "versions": versions,
        "python": platform.python_version(),
        "threads": args.threads,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_outputs(out_dir, bridge, config, log_data, args)
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    log(f"wrote {out_dir} ({size / 1e6:.1f} MB); final held-out loss mix {final['mix']:.4f} "
        f"(code {final['code']:.4f}, prose {final['prose']:.4f}) vs unigram entropy "
        f"{unigram['mix_nats']:.4f}; {tokens_seen - tokens_start:,} tokens in {train_seconds / 60:.1f} min "
        f"({(tokens_seen - tokens_start) / train_seconds:,.0f} tok/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
