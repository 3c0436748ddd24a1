"""Training data of the toy models: tokenized corpora, held-out split, chunks, batches.

Used by scripts/train_toy_model.py (see its docstring for the data's form).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPORA_DIR = ROOT / "data" / "corpora"
TOKENIZER_DIR = ROOT / "data" / "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CORPORA = ("code", "prose")
HOLDOUT_MOD = 50  # 1 in 50 documents = 2% held out
IGNORE = -100
EVAL_SEED = 1234  # the held-out evaluation chunks do not depend on --seed


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


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


def split_corpus(corpus: str, tokenizer, cache_dir: Path | None, ctx_len: int, min_chunk: int,
                 max_eval: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], dict]:
    """One corpus for training: (training documents, training chunks, held-out evaluation chunks
    (at most ``max_eval``, picked with ``EVAL_SEED``), what was read, for the training log)."""
    t0 = time.time()
    all_docs = load_corpus_tokens(corpus, tokenizer, cache_dir)
    held = [i for i in range(len(all_docs)) if is_heldout(corpus, i)]
    held_set = set(held)
    train_docs = [d for i, d in enumerate(all_docs) if i not in held_set]
    held_docs = [all_docs[i] for i in held]
    tc, _ = chunk_documents(train_docs, ctx_len, min_chunk)
    hc, _ = chunk_documents(held_docs, ctx_len, min_chunk)
    if not hc:
        raise SystemExit(f"no held-out chunks for {corpus}")
    n_eval = min(len(hc), max_eval)
    pick = np.sort(np.random.default_rng(EVAL_SEED).choice(len(hc), n_eval, replace=False))
    eval_set = [hc[i] for i in pick]
    info = {
        "documents": len(all_docs),
        "heldout_documents": len(held),
        "heldout_doc_indices": held,
        "train_tokens": int(sum(len(d) for d in train_docs)),
        "heldout_tokens": int(sum(len(d) for d in held_docs)),
        "train_chunks": len(tc),
        "train_chunk_tokens": int(sum(len(c) for c in tc)),
        "heldout_chunks": len(hc),
        "eval_chunks": n_eval,
        "eval_tokens": int(sum(len(c) for c in eval_set)),
    }
    log(f"{corpus}: {len(all_docs)} docs ({len(held)} held out), {info['train_tokens']:,} train tokens, "
        f"{len(tc):,} train chunks, {n_eval} eval chunks; tokenized in {time.time() - t0:.1f}s")
    return train_docs, tc, eval_set, info


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


def repeated_chunk(rng: np.random.Generator, stream: ChunkStream, d_vocab: int, body: int,
                   len_max: int | None = None, random_frac: float = 0.5,
                   vocab: int | None = None, shuffle_max: int | None = None) -> np.ndarray:
    """A synthetic repeat (no BOS): random tokens ``r r`` or a training span ``s s``, with
    ``len(r) <= len_max`` (default ``body // 2``); with ``shuffle_max``, the second copy is
    ``r`` cut into pieces of 2..shuffle_max tokens, in a random order."""
    body_half = min(body // 2, len_max or body // 2)
    if rng.random() < random_frac:
        length = int(rng.integers(8, body_half + 1))
        r = rng.integers(1, min(vocab or d_vocab, d_vocab), size=length)
    else:
        chunk = stream.next()
        length = int(rng.integers(min(8, len(chunk)), min(len(chunk), body_half) + 1))
        start = int(rng.integers(0, len(chunk) - length + 1))
        r = chunk[start : start + length]
    second = r
    if shuffle_max:
        cuts = [0]
        while cuts[-1] < length:
            cuts.append(min(length, cuts[-1] + int(rng.integers(2, shuffle_max + 1))))
        pieces = [r[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
        second = np.concatenate([pieces[i] for i in rng.permutation(len(pieces))])
    return np.concatenate([r, second])[:body]


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
