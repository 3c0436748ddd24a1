"""Trigram neurons: a causal test of which tokens a neuron's top examples depend on.

Method. For each of a neuron's first ``top_ranks`` top examples (token at ``pos``), the model is
re-run on a window of the last ``WINDOW`` tokens ending at ``pos`` (BOS first; its activation
is the baseline) and on copies where one token is replaced by each of ``REPLACEMENTS`` tokens
drawn from the most frequent tokens of the stored contexts (never the token it replaces):

- the previous token (``pos - 1``)        -> prev_survival
- the current token (``pos``)              -> current_survival
- the token before the previous (``pos - 2``) -> back_survival

A survival is the activation after the replacement over the baseline, clipped to [0, 1],
averaged over replacements and examples. A token neuron has current_survival ≈ 0 and
prev_survival ≈ 1; a trigram neuron (` ice cream`) has both ≈ 0 and back_survival ≈ 1; a
bigram-of-the-past or skip-trigram neuron keeps its activation when the previous token goes.

    score = pair_share × (1 - prev_survival) × (1 - current_survival) × back_survival

where pair_share is the share of all the neuron's top examples on its most common
(previous, current) token pair, stored as prev_token_str, token_str. Examples whose window
baseline is not positive are left out. One row per neuron in ``trigram_scores``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.analyses.common import IndexContext, Reads, top_examples
from indexer.store.schema import TrigramScores

NAME = "trigram"
TABLES = (TrigramScores,)
WINDOW = 16
REPLACEMENTS = 3
FREQUENT = 64
OFFSETS = {"current_survival": 0, "prev_survival": 1, "back_survival": 2}


def frequent_tokens(ix: IndexContext, n: int = FREQUENT) -> np.ndarray:
    df = ix.sql(
        """SELECT t AS token_id, count(*) AS n FROM (SELECT unnest(token_ids[2:]) AS t FROM contexts)
           GROUP BY t ORDER BY n DESC, t LIMIT $n""",
        {"n": n},
    )
    return df.token_id.to_numpy(np.int64)


def run(ix: IndexContext) -> dict[type, dict[str, Any]]:
    every = top_examples(ix, 1 << 30)
    ex = every[every["rank"] < ix.options.top_ranks]
    items = sorted(set(zip(ex.ctx_id.tolist(), ex.pos.tolist())))
    contexts = ix.contexts(c for c, _ in items)
    bos = ix.model.info.bos_token_id
    pool = frequent_tokens(ix)
    sequences, index = [], {}
    for c, p in items:
        if c not in contexts or not 1 <= p < len(contexts[c]):
            continue
        window = np.concatenate([[bos], contexts[c][max(1, p - WINDOW + 1) : p + 1]])
        start = len(sequences)  # the window, then its copies: one run of sequences per item
        where = index[(c, p)] = {}  # test -> its copies' offsets in the run
        sequences.append(window)
        rng = np.random.default_rng([c, p])
        for name, back in OFFSETS.items():
            at = len(window) - 1 - back
            if at < 1:
                continue
            choices = pool[pool != window[at]]
            first = len(sequences) - start
            for token in rng.choice(choices, size=min(REPLACEMENTS, len(choices)), replace=False):
                variant = window.copy()
                variant[at] = token
                sequences.append(variant)
            where[name] = slice(first, len(sequences) - start)
        where["run"] = (start, len(sequences) - start)
    reads, asked = Reads(), []
    for r in ex.itertuples(index=False):
        where = index.get((r.ctx_id, r.pos))
        if where is not None:
            asked.append((r, where, reads.ask((r.site, r.layer), *where["run"], r.neuron)))
    acts = ix.resumable_last_token_acts(NAME, sequences, reads, "trigram test") if sequences else {}
    survival: dict[tuple, dict[str, list]] = {}
    for r, where, handle in asked:
        a = Reads.of(acts, handle)
        base = a[0]
        if base <= 0:
            continue
        got = survival.setdefault((r.site, r.layer, r.neuron), {k: [] for k in OFFSETS})
        for name in OFFSETS:
            if name in where:
                got[name].append(float(np.clip(a[where[name]] / base, 0, 1).mean()))
    return {TrigramScores: _rows(every, survival)}


def _rows(every, survival: dict) -> dict[str, list]:
    rows: dict[str, list] = {c: [] for c in TrigramScores.columns()}
    for (site, layer, neuron), g in every.groupby(["site", "layer", "neuron"]):
        s = survival.get((site, layer, neuron))
        if not s:
            continue
        pairs = g.groupby(["prev_token_str", "token_str"]).size().sort_values(ascending=False, kind="stable")
        (prev, cur), n = pairs.index[0], int(pairs.iloc[0])
        mean = {k: float(np.mean(v)) if v else np.nan for k, v in s.items()}
        share = n / len(g)
        score = share * (1 - np.nan_to_num(mean["prev_survival"], nan=1.0)) * (1 - mean["current_survival"])
        score *= np.nan_to_num(mean["back_survival"], nan=1.0)
        for col, v in (("site", site), ("layer", layer), ("neuron", neuron), ("score", float(score)),
                       ("prev_token_str", prev), ("token_str", cur), ("pair_share", share),
                       ("n_examples", len(s["current_survival"])), *mean.items()):
            rows[col].append(v)
    return rows
