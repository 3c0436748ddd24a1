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
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CORPORA_DIR = ROOT / "data" / "corpora"
TOKENIZER_DIR = ROOT / "data" / "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CORPORA = ("code", "prose")
HOLDOUT_MOD = 50  # 1 in 50 documents = 2% held out
EVAL_SEED = 1234  # the held-out evaluation chunks do not depend on --seed
IGNORE = -100


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
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- data


def is_heldout(corpus: str, doc_index: int) -> bool:
    h = hashlib.sha256(f"{corpus}:{doc_index}".encode()).digest()
    return int.from_bytes(h[:8], "big") % HOLDOUT_MOD == 0


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_corpus_tokens(corpus: str, tokenizer, cache_dir: Path | None) -> list[np.ndarray]:
    """Token ids of every document (no special tokens), in row order. Cached (keyed by the
    sha256 of the corpus file and of tokenizer.json) so consecutive runs skip tokenizing."""
    cache = None
    if cache_dir is not None:
        key = hashlib.sha256(
            (sha256_file(CORPORA_DIR / f"{corpus}.parquet") + sha256_file(TOKENIZER_DIR / "tokenizer.json")).encode()
        ).hexdigest()[:24]
        cache = cache_dir / f"{corpus}-{key}.npz"
        if cache.is_file():
            z = np.load(cache)
            return np.split(z["ids"], z["offsets"][1:-1])
    out = _tokenize(corpus, tokenizer)
    if cache is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in out])]).astype(np.int64)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, ids=np.concatenate(out).astype(np.int32), offsets=offsets)
        os.replace(tmp, cache)
    return out


def _tokenize(corpus: str, tokenizer) -> list[np.ndarray]:
    import pyarrow.parquet as pq

    texts = pq.read_table(CORPORA_DIR / f"{corpus}.parquet", columns=["text"]).column("text")
    texts = texts.to_pylist()
    fast = tokenizer.backend_tokenizer  # the `tokenizers.Tokenizer` behind the HF tokenizer
    out: list[np.ndarray] = []
    step = 64
    for i in range(0, len(texts), step):
        encs = fast.encode_batch(texts[i : i + step], add_special_tokens=False)
        out.extend(np.asarray(e.ids, dtype=np.int32) for e in encs)
    return out


def chunk_documents(
    docs: list[np.ndarray], ctx_len: int, min_chunk: int
) -> tuple[list[np.ndarray], list[int]]:
    """Consecutive chunks of ctx_len-1 document tokens (BOS is added at batch time)."""
    body = ctx_len - 1
    chunks, doc_ids = [], []
    for d, ids in enumerate(docs):
        for s in range(0, len(ids), body):
            c = ids[s : s + body]
            if len(c) >= min_chunk:
                chunks.append(c)
                doc_ids.append(d)
    return chunks, doc_ids


def make_batch(chunks: list[np.ndarray], bos: int):
    """tokens [B, T] (BOS + chunk, right-padded with the BOS id) and targets [B, T]: the next
    token at each position, IGNORE at padding and at the last real position (there is no next
    token), so the loss is taken on the full logits without slicing them."""
    import torch

    T = 1 + max(len(c) for c in chunks)
    tokens = np.full((len(chunks), T), bos, dtype=np.int64)
    targets = np.full((len(chunks), T), IGNORE, dtype=np.int64)
    for i, c in enumerate(chunks):
        tokens[i, 1 : 1 + len(c)] = c
        targets[i, : len(c)] = c
    return torch.from_numpy(tokens), torch.from_numpy(targets)


class ChunkStream:
    """Endless stream of training chunks of one corpus: shuffled, reshuffled every epoch."""

    def __init__(self, chunks: list[np.ndarray], rng: np.random.Generator):
        self.chunks, self.rng = chunks, rng
        self.order = rng.permutation(len(chunks))
        self.pos = 0
        self.epochs_started = 1

    def next(self) -> np.ndarray:
        if self.pos >= len(self.order):
            self.order = self.rng.permutation(len(self.chunks))
            self.pos = 0
            self.epochs_started += 1
        c = self.chunks[self.order[self.pos]]
        self.pos += 1
        return c

    @property
    def epochs(self) -> float:
        return self.epochs_started - 1 + self.pos / len(self.order)


def unigram_entropy_nats(docs_by_corpus: dict[str, list[np.ndarray]], weights: dict[str, float],
                         vocab: int) -> dict[str, float]:
    """Unigram entropy (nats/token) of each corpus and of the weighted mixture of their
    unigram distributions (document tokens only; BOS is never a target)."""
    dists = {}
    for name, docs in docs_by_corpus.items():
        counts = np.bincount(np.concatenate(docs), minlength=vocab).astype(np.float64)
        dists[name] = counts / counts.sum()

    def H(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    out = {name: H(p) for name, p in dists.items()}
    out["mix"] = H(sum(weights[n] * dists[n] for n in dists))
    return out


def provenance_entropies() -> dict:
    """Unigram entropies (nats/token) from data/corpora/provenance.json: per corpus and of the
    training mix (its `mix` entry, with the token weights it was computed for)."""
    path = CORPORA_DIR / "provenance.json"
    if not path.is_file():
        return {}
    prov = json.loads(path.read_text())
    out: dict = {}
    for c in CORPORA:
        v = prov.get("corpora", {}).get(c, {}).get("unigram_entropy_nats")
        if v is not None:
            out[f"{c}_nats"] = float(v)
    mix = prov.get("mix", {})
    if "unigram_entropy_nats" in mix:
        out["mix_nats"] = float(mix["unigram_entropy_nats"])
        out["mix_weights"] = mix.get("weights")
    return out


# ----------------------------------------------------------------------------- model


def model_config(args: argparse.Namespace, d_vocab: int) -> dict:
    """The exact dict `indexer.models.build_native_bridge` (TransformerBridgeConfig(**d)) takes."""
    return {
        "model_name": args.name,
        "n_layers": args.layers,
        "d_model": 256,
        "n_heads": 4,
        "d_head": 64,
        "d_mlp": 1024,
        "n_ctx": args.ctx_len,
        "d_vocab": d_vocab,
        "act_fn": args.act_fn,
        "normalization_type": "LN",
        "eps": 1e-5,
        "positional_embedding_type": "standard",
        "attn_only": False,
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


# ----------------------------------------------------------------------------- outputs


def save_outputs(out_dir: Path, bridge, config: dict, log_data: dict, args) -> None:
    import torch
    from safetensors.torch import save_file

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in bridge.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "name": args.name})
    (tmp / "bridge_config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in TOKENIZER_FILES:
        shutil.copy2(TOKENIZER_DIR / f, tmp / f)
    (tmp / "training_log.json").write_text(json.dumps(log_data, indent=2) + "\n")
    plot_loss(tmp / "loss.png", log_data)
    (tmp / "README.md").write_text(model_card(config, log_data))

    # Self-check: the saved weights load strictly into a fresh bridge built from the saved
    # config and give the trained model's logits.
    from safetensors.torch import load_file

    from indexer.models import build_native_bridge

    fresh = build_native_bridge(json.loads((tmp / "bridge_config.json").read_text()))
    fresh.load_state_dict(load_file(str(tmp / "model.safetensors")), strict=True)
    fresh.eval()
    bridge.eval()
    sample = torch.randint(1, config["d_vocab"], (2, 64), generator=torch.Generator().manual_seed(0))
    sample[:, 0] = 0
    with torch.no_grad():
        diff = (fresh(sample) - bridge(sample)).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"saved model differs from the trained one (max |dlogit| = {diff})")
    log(f"self-check: reloaded weights (strict) give the same logits (max |diff| = {diff:.2e})")

    for f in tmp.iterdir():
        f.chmod(0o644)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def plot_loss(path: Path, log_data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    tr = log_data["train_loss"]
    ax.plot([r["tokens"] for r in tr], [r["train_loss"] for r in tr], lw=1, label="train (mix)")
    ho = log_data["heldout_loss"]
    ax.plot([r["tokens"] for r in ho], [r["heldout_loss"] for r in ho], "o-", ms=3,
            label="held-out (mix)")
    for key, style in (("code", ":"), ("prose", "--")):
        pts = [(r["tokens"], r[key]) for r in ho if key in r]
        if pts:
            ax.plot(*zip(*pts), style, lw=1, label=f"held-out {key}")
    h = log_data["unigram_entropy"]["mix_nats"]
    ax.axhline(h, color="gray", lw=1, ls="-.", label=f"unigram entropy of the mix ({h:.2f})")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_ylim(0, max(10.0, h + 1))
    ax.set_title(f"{log_data['name']}: {log_data['config']['n_layers']}L "
                 f"{log_data['config']['act_fn']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def model_card(config: dict, ld: dict) -> str:
    f = ld["final_heldout_loss"]
    h = ld["unigram_entropy"]
    n_params = ld["n_params"]
    return f"""# {ld['name']}

A toy transformer language model embedded in neuroscope for demos, tests and examples.
Trained from scratch on the embedded corpora with `scripts/train_toy_model.py`.

| | |
|---|---|
| layers | {config['n_layers']} |
| d_model / heads x d_head / d_mlp | {config['d_model']} / {config['n_heads']} x {config['d_head']} / {config['d_mlp']} |
| activation | `{config['act_fn']}`{' (x * softmax(x), then a LayerNorm inside the MLP)' if config['act_fn'] == 'solu_ln' else ''} |
| normalization | LayerNorm (pre-LN), learned positional embeddings, untied unembedding |
| context | {config['n_ctx']} tokens, BOS (`<|endoftext|>`, id 0) at position 0 |
| vocabulary | {config['d_vocab']} (byte-level BPE, `data/tokenizer`) |
| parameters | {n_params:,} |
| training tokens | {ld['tokens_seen']:,} ({ld['steps']} steps x {ld['batch_size']} contexts) |
| seed | {ld['seed']} |
| data | ~{round(100 * ld['code_frac'])}% of contexts from `code` (CPython stdlib), ~{round(100 * (1 - ld['code_frac']))}% from `prose` (Python docs + Shakespeare) |
| held-out loss (nats/token) | code {f['code']:.3f}, prose {f['prose']:.3f}, mix {f['mix']:.3f} |
| unigram entropy (nats/token) | code {h['code_nats']:.3f}, prose {h['prose_nats']:.3f}, mix {h['mix_nats']:.3f} |

Every training context is `[BOS] + up to {config['n_ctx'] - 1} tokens of one document` (the form
the indexer feeds); nothing is packed across documents. 2% of the documents of each corpus
(sha256 of `"<corpus>:<row index>"` mod {HOLDOUT_MOD} == 0) were held out and never trained on.

Load it with `indexer.models.load_model("{ld['name']}")` (a `TransformerBridge` built with
`TransformerBridge.boot_native` from `bridge_config.json`, weights from `model.safetensors`).
The training curve is in `loss.png`, the full record in `training_log.json`.

This is a toy: a few million tokens on one CPU; its neurons are for exercising the indexer,
not for research conclusions.
"""


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from indexer.models import build_native_bridge

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
        t0 = time.time()
        all_docs = load_corpus_tokens(corpus, tokenizer, None if args.no_cache else Path(args.cache_dir))
        held = [i for i in range(len(all_docs)) if is_heldout(corpus, i)]
        held_set = set(held)
        train_docs = [d for i, d in enumerate(all_docs) if i not in held_set]
        held_docs = [all_docs[i] for i in held]
        docs[corpus] = train_docs
        tc, _ = chunk_documents(train_docs, args.ctx_len, args.min_chunk)
        hc, _ = chunk_documents(held_docs, args.ctx_len, args.min_chunk)
        if not hc:
            raise SystemExit(f"no held-out chunks for {corpus}")
        n_eval = min(len(hc), args.eval_chunks // 2)
        pick = np.sort(np.random.default_rng(EVAL_SEED).choice(len(hc), n_eval, replace=False))
        eval_sets[corpus] = [hc[i] for i in pick]
        train_chunks[corpus] = tc
        data_info[corpus] = {
            "documents": len(all_docs),
            "heldout_documents": len(held),
            "heldout_doc_indices": held,
            "train_tokens": int(sum(len(d) for d in train_docs)),
            "heldout_tokens": int(sum(len(d) for d in held_docs)),
            "train_chunks": len(tc),
            "train_chunk_tokens": int(sum(len(c) for c in tc)),
            "heldout_chunks": len(hc),
            "eval_chunks": n_eval,
            "eval_tokens": int(sum(len(c) for c in eval_sets[corpus])),
        }
        log(f"{corpus}: {len(all_docs)} docs ({len(held)} held out), "
            f"{data_info[corpus]['train_tokens']:,} train tokens, {len(tc):,} train chunks, "
            f"{n_eval} eval chunks; tokenized in {time.time() - t0:.1f}s")

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
    total_steps = max(1, math.ceil(args.tokens / exp_tokens_per_batch))
    warmup = max(1, min(200, round(args.warmup_frac * total_steps)))
    log(f"{total_steps} steps of {args.batch_size} contexts (~{exp_tokens_per_batch:.0f} "
        f"tokens/step), warmup {warmup}, lr {args.lr}")

    # ---- model
    bridge = build_native_bridge(config)
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
    tokens_by_corpus = {c: 0 for c in CORPORA}
    chunks_by_corpus = {c: 0 for c in CORPORA}
    window_loss, window_n = 0.0, 0
    t_train = time.time()
    t_window, tok_window = time.time(), 0

    eval_seconds = 0.0

    def run_eval(step: int) -> dict:
        nonlocal eval_seconds
        t0 = time.time()
        r = evaluate(bridge, eval_sets, args.batch_size, bos)
        r["mix"] = sum(weights[c] * r[c] for c in CORPORA)
        heldout_log.append({"step": step, "tokens": tokens_seen, "heldout_loss": r["mix"],
                            "code": r["code"], "prose": r["prose"]})
        log(f"held-out @ step {step}: mix {r['mix']:.4f} code {r['code']:.4f} "
            f"prose {r['prose']:.4f} ({time.time() - t0:.1f}s)")
        eval_seconds += time.time() - t0
        return r

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
            avg_rate = tokens_seen / busy
            n_evals_left = (total_steps - 1) // args.eval_every - done // args.eval_every + 1
            eval_each = eval_seconds / max(1, len(heldout_log) - 1) if len(heldout_log) > 1 else 8.0
            eta = (total_steps - done) * busy / done + n_evals_left * eval_each
            train_log.append({"step": done, "tokens": tokens_seen,
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
        "n_params": n_params,
        "batch_size": args.batch_size,
        "ctx_len": args.ctx_len,
        "code_frac": args.code_frac,
        "precision": "fp32 weights, bf16 autocast" if not args.no_bf16 else "fp32",
        "optimizer": {"name": "AdamW", "lr": args.lr, "betas": [0.9, 0.95],
                      "weight_decay": args.weight_decay, "weight_decay_on": "params with ndim >= 2",
                      "grad_clip": args.grad_clip, "warmup_steps": warmup,
                      "schedule": f"linear warmup, cosine decay to {args.min_lr_frac} x lr"},
        "steps": total_steps,
        "tokens_target": int(args.tokens),
        "tokens_seen": tokens_seen,
        "tokens_seen_by_corpus": tokens_by_corpus,
        "chunks_seen_by_corpus": chunks_by_corpus,
        "epochs_by_corpus": {c: round(streams[c].epochs, 3) for c in CORPORA},
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "wall_seconds": round(wall, 1),
        "tokens_per_second": round(tokens_seen / train_seconds, 1),
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
        f"{unigram['mix_nats']:.4f}; {tokens_seen:,} tokens in {train_seconds / 60:.1f} min "
        f"({tokens_seen / train_seconds:,.0f} tok/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
