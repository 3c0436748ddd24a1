"""Minimal examples: the shortest text that still makes a neuron fire at its top example.

Method. For each of a neuron's first ``top_ranks`` top examples (token at context position
``pos``), the model is re-run on cuts ``[BOS] + tokens[pos - L + 1 .. pos]`` for L = 1..8, then
12, 16, 24, 32, 48, 64 (longer cuts are not tried; a prefix shorter than 64 is tried whole).
The minimal example is the shortest cut whose activation at its last token keeps at least
``keep_fraction`` (default 0.5) of the example's activation in the index. Cutting from the left is all there is to
do: the model is causal, so tokens after ``pos`` cannot change the activation at ``pos`` and
every cut ends there (cutting from the right is exact for free). For L > 8 the lengths tried
are a grid, so a stored length above 8 is an upper bound within that grid. ``found`` is false
when no cut up to 64 tokens kept enough; the row then holds the whole prefix, with the
kept fraction of the longest cut tried.

Batched: every cut of every (context, position) shared by any neuron is one sequence; the
sequences are deduplicated across neurons and sites, sorted by length and run in batches
of about 8k tokens, chunk by chunk (a killed run resumes at its last finished chunk).

Tables: ``minimal_examples`` (one row per example) and ``minimal_summary`` (per neuron: the
share of examples whose minimal cut has at most 8 tokens, and the median length).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.analyses.common import IndexContext, Reads, top_examples
from indexer.store.schema import MinimalExamples, MinimalSummary

NAME = "minimal"
TABLES = (MinimalExamples, MinimalSummary)
LENGTHS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64)
SHORT = 8


def cuts(tokens: np.ndarray, pos: int, bos: int) -> tuple[list[int], list[np.ndarray]]:
    """The lengths tried at ``pos`` (the whole prefix last if it is short) and their sequences."""
    lengths = [n for n in LENGTHS if n < pos] + ([pos] if pos <= LENGTHS[-1] else [])
    return lengths, [np.concatenate([[bos], tokens[pos - n + 1 : pos + 1]]) for n in lengths]


def run(ix: IndexContext) -> dict[type, dict[str, Any]]:
    ex = top_examples(ix, ix.options.top_ranks)
    items = sorted(set(zip(ex.ctx_id.tolist(), ex.pos.tolist())))
    contexts = ix.contexts(c for c, _ in items)
    items = [(c, p) for c, p in items if c in contexts and 1 <= p < len(contexts[c])]
    bos = ix.model.info.bos_token_id
    lengths, sequences, first = {}, [], {}
    for c, p in items:
        first[(c, p)] = len(sequences)
        lengths[(c, p)], seqs = cuts(contexts[c], p, bos)
        sequences += seqs
    reads, asked = Reads(), []
    for r in ex.itertuples(index=False):
        key = (r.ctx_id, r.pos)
        if key in first:
            asked.append((r, reads.ask((r.site, r.layer), first[key], len(lengths[key]), r.neuron)))
    acts = ix.resumable_last_token_acts(NAME, sequences, reads, "minimal examples") if sequences else {}
    rows: dict[str, list] = {c: [] for c in MinimalExamples.columns()}
    for r, handle in asked:
        tried = lengths[(r.ctx_id, r.pos)]
        values = Reads.of(acts, handle)
        kept = values / r.activation
        ok = np.flatnonzero(kept >= ix.options.keep_fraction)
        i = int(ok[0]) if len(ok) else len(tried) - 1
        n = tried[i] if len(ok) else r.pos
        start = r.pos - n + 1
        for col, v in (("site", r.site), ("layer", r.layer), ("neuron", r.neuron), ("rank", r.rank),
                       ("start", start), ("length", n), ("kept_fraction", float(kept[i])), ("ctx_id", r.ctx_id),
                       ("pos", r.pos), ("text", "".join(ix.vocab[contexts[r.ctx_id][start : r.pos + 1]])),
                       ("found", bool(len(ok)))):
            rows[col].append(v)
    return {MinimalExamples: rows, MinimalSummary: summary(rows)}


def summary(rows: dict[str, list]) -> dict[str, list]:
    """Per neuron: examples cut, share whose minimal cut has <= 8 tokens, median length."""
    import pandas as pd

    df = pd.DataFrame({k: rows[k] for k in ("site", "layer", "neuron", "length", "found")})
    out: dict[str, list] = {c: [] for c in MinimalSummary.columns()}
    for (site, layer, neuron), g in df.groupby(["site", "layer", "neuron"]):
        for col, v in (("site", site), ("layer", layer), ("neuron", neuron), ("n_examples", len(g)),
                       ("frac_within_8", float((g.found & (g.length <= SHORT)).mean())),
                       ("median_length", float(g.length.median()))):
            out[col].append(v)
    return out
