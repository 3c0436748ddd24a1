"""Token saliency: which tokens before a feature's top example make it fire.

Method. For each of a feature's first ``top_ranks`` top examples (token at context position
``pos``), the model is re-run on the window ``[BOS] + tokens[pos - WINDOW + 1 .. pos]`` (the
whole prefix when it is shorter); its activation at ``pos`` is the baseline. Then each token
of the window in turn, the example's own token included, is corrupted ``REPLACEMENTS`` times:

- ``frequent`` (the default): replaced by one of the ``FREQUENT`` most frequent tokens of the
  stored contexts, never itself (as the trigram test does);
- ``random``: replaced by a token drawn uniformly from the vocabulary (BOS and itself excluded);
- ``noise``: kept, with Gaussian noise of ``NOISE_SCALE`` x the standard deviation of the
  embedding matrix's entries added to its token embedding (the corruption of ROME's causal
  tracing, Meng et al. 2022).

drop = baseline - mean activation over the corrupted windows; rel_drop = drop / baseline (1:
the activation is gone; negative: the token held it down). Within an example, salience_rank 0
is the largest drop (ties: the token nearest the example's first).

Why frequent tokens by default: the corrupted window stays ordinary text, so the drop answers
"does this token matter, against a typical token in its place". A uniformly random token is
mostly a rare fragment from the vocabulary's long tail, which can itself excite or silence a
feature (rare tokens are strong signals); Gaussian noise leaves a residual stream no token
makes, and its drop depends on the scale chosen. Both are available (``--saliency``) to check
that a finding does not hinge on the corruption.

Examples whose window baseline is not positive are left out (the window lost what made the
feature fire). Batched: the windows of every (context, position) shared by any feature are run
together, sorted by length, in chunks of about ``CHUNK_SEQUENCES`` sequences; each chunk's drops
are saved under ``analyses/_partial/saliency/`` as it finishes, so a killed run resumes there.
Table ``token_saliency``: one row per (feature, top example, window token).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.analyses.common import IndexContext, Reads, top_examples
from indexer.analyses.trigram import frequent_tokens
from indexer.errors import ConfigError
from indexer.store.chunks import sequence_digest
from indexer.store.schema import TokenSaliency

NAME = "saliency"
TABLES = (TokenSaliency,)
METHODS = ("frequent", "random", "noise")
WINDOW = 20
REPLACEMENTS = 2
NOISE_SCALE = 3.0
CHUNK_SEQUENCES = 1 << 14  # sequences re-run per saved chunk


def run(ix: IndexContext) -> dict[type, dict[str, Any]]:
    method = ix.options.saliency
    if method not in METHODS:
        raise ConfigError(f"--saliency {method!r}: expected {' or '.join(METHODS)}")
    ex = top_examples(ix, ix.options.top_ranks)
    contexts = ix.contexts(ex.ctx_id.tolist())
    items = sorted({(c, p) for c, p in zip(ex.ctx_id.tolist(), ex.pos.tolist())
                    if c in contexts and 1 <= p < len(contexts[c])})
    if not items:
        return {TokenSaliency: {c: [] for c in TokenSaliency.columns()}}
    corrupt = Corruption(ix, method)
    windows = {key: window(contexts[key[0]], key[1], ix.model.info.bos_token_id) for key in items}
    per_chunk = max(1, CHUNK_SEQUENCES // (1 + WINDOW * REPLACEMENTS))  # items
    records = list(ex.itertuples(index=False))
    by_item: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(records):
        by_item.setdefault((r.ctx_id, r.pos), []).append(i)
    bar = ix.bar(sum(1 + (len(windows[k]) - 1) * REPLACEMENTS for k in items), f"token saliency ({method})")
    drops: dict[int, np.ndarray] = {}  # example row -> [baseline, drop per window token]
    for n, start in enumerate(range(0, len(items), per_chunk)):
        chunk = items[start : start + per_chunk]
        seqs, first, noise_at = corrupt.sequences(chunk, windows)
        ran = []

        def compute(chunk=chunk, seqs=seqs, first=first, noise_at=noise_at) -> dict[str, np.ndarray]:
            ran.append(True)
            delta = corrupt.embed_delta(noise_at) if method == "noise" else None
            rows = [i for key in chunk for i in by_item[key]]
            reads, handles = Reads(), []  # per example: its window and every corrupted copy, at its feature
            for i in rows:
                r, key = records[i], (records[i].ctx_id, records[i].pos)
                count = 1 + (len(windows[key]) - 1) * REPLACEMENTS
                handles.append(reads.ask((r.site, int(r.layer)), first[key], count, int(r.neuron)))
            acts = ix.last_token_acts(seqs, reads.pairs(), "token saliency", bar=bar, embed_delta=delta)
            return _chunk_drops(rows, [Reads.of(acts, h) for h in handles])

        saved = ix.saved_chunk(NAME, n, sequence_digest(seqs, method.encode()), compute)
        if not ran:
            bar.update(len(seqs))  # read back from a killed run's save
        for r, lo, hi in zip(saved["rows"], saved["starts"], saved["ends"]):
            drops[int(r)] = saved["values"][lo:hi]
    bar.close()
    return {TokenSaliency: _rows(ix, records, drops, contexts, method)}


def window(tokens: np.ndarray, pos: int, bos: int) -> np.ndarray:
    """[BOS] + the at most WINDOW tokens ending at ``pos``."""
    return np.concatenate([[bos], tokens[max(1, pos - WINDOW + 1) : pos + 1]]).astype(np.int64)


class Corruption:
    """The corrupted copies of windows for one method, seeded by (context, position, token)."""

    def __init__(self, ix: IndexContext, method: str):
        self.method = method
        self.bos = ix.model.info.bos_token_id
        self.pool = frequent_tokens(ix) if method == "frequent" else np.arange(ix.model.info.d_vocab)
        self._choices: dict[int, np.ndarray] = {}  # token -> the frequent pool without it and BOS
        if method == "noise":
            import torch

            with torch.inference_mode():
                embed = ix.model.bridge.W_E.detach().float()
            self.sigma = NOISE_SCALE * float(embed.std())
            self.d_model = int(embed.shape[1])

    def sequences(self, chunk: list[tuple[int, int]], windows: dict) -> tuple[list[np.ndarray], dict, np.ndarray]:
        """Every window of ``chunk`` then its corrupted copies (token-major); the index of each
        window's first row; per row the (window position, seed) of its noise (-1: none)."""
        seqs: list[np.ndarray] = []
        first: dict[tuple[int, int], int] = {}
        noise_at: list[tuple[int, int]] = []
        for c, p in chunk:
            w = windows[(c, p)]
            first[(c, p)] = len(seqs)
            seqs.append(w)
            noise_at.append((-1, 0))
            for k in range(1, len(w)):
                rng = np.random.default_rng([c, p, k])
                for r, token in enumerate(self._replacements(w[k], rng)):
                    variant = w.copy()
                    if self.method == "noise":
                        noise_at.append((k, int(rng.integers(1 << 62))))
                    else:
                        variant[k] = token
                        noise_at.append((-1, 0))
                    seqs.append(variant)
        return seqs, first, np.array(noise_at, np.int64).reshape(-1, 2)

    def _replacements(self, token: int, rng: np.random.Generator) -> list[int]:
        if self.method == "noise":
            return [token] * REPLACEMENTS
        choices = self._choices.get(token)
        if choices is None:
            choices = self.pool[(self.pool != token) & (self.pool != self.bos)]
            if self.method == "frequent":  # a pool of FREQUENT tokens; random's is the vocabulary
                self._choices[token] = choices
        return list(rng.choice(choices, size=REPLACEMENTS, replace=len(choices) < REPLACEMENTS))

    def embed_delta(self, noise_at: np.ndarray):
        """The ``embed_delta`` of ``IndexContext.last_token_acts`` for rows noised at ``noise_at``."""

        def delta(rows: np.ndarray, width: int) -> np.ndarray:
            out = np.zeros((len(rows), width, self.d_model), np.float32)
            for i, row in enumerate(rows):
                at, seed = noise_at[row]
                if at >= 0:
                    out[i, at] = self.sigma * np.random.default_rng(seed).standard_normal(self.d_model)
            return out

        return delta


def _chunk_drops(rows: list[int], values: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per example row of the chunk (``values``: its window's activation, then its corrupted
    copies', REPLACEMENTS per window token): its baseline then the drop of each window token,
    packed as (rows, starts, ends, values) so a chunk saves as plain arrays."""
    out_rows, starts, ends, drops = [], [], [], []
    at = 0
    for i, a in zip(rows, values):
        base = a[0]
        if not base > 0:
            continue
        replaced = a[1:].reshape(-1, REPLACEMENTS).mean(axis=1)
        out_rows.append(i)
        starts.append(at)
        drops.append(np.concatenate([[base], base - replaced]))
        at += len(replaced) + 1
        ends.append(at)
    return {"rows": np.array(out_rows, np.int64), "starts": np.array(starts, np.int64),
            "ends": np.array(ends, np.int64),
            "values": np.concatenate(drops).astype(np.float64) if drops else np.zeros(0)}


def _rows(ix: IndexContext, records: list, drops: dict[int, np.ndarray], contexts: dict, method: str) -> dict[str, list]:
    out: dict[str, list] = {c: [] for c in TokenSaliency.columns()}
    for i in sorted(drops):
        r = records[i]
        base, drop = float(drops[i][0]), drops[i][1:]
        pos = int(r.pos)
        token_pos = np.arange(pos - len(drop) + 1, pos + 1)
        ids = contexts[int(r.ctx_id)][token_pos]
        order = np.lexsort((pos - token_pos, -drop))  # largest drop first; ties: nearest the example
        rank = np.empty(len(drop), np.int64)
        rank[order] = np.arange(len(drop))
        n = len(drop)
        for col, v in (("site", [r.site] * n), ("layer", [int(r.layer)] * n), ("neuron", [int(r.neuron)] * n),
                       ("rank", [int(r.rank)] * n), ("ctx_id", [int(r.ctx_id)] * n), ("pos", [pos] * n),
                       ("token_pos", token_pos.tolist()), ("token_id", ids.tolist()),
                       ("token_str", ix.vocab[ids].tolist()), ("activation_drop", drop.tolist()),
                       ("rel_drop", (drop / base).tolist()), ("salience_rank", rank.tolist()),
                       ("baseline", [base] * n), ("method", [method] * n)):
            out[col] += v
    return out
