"""Flags: dead, dense, polysemantic and interpretability-illusion neurons (read from the index;
no model needed).

Method.
- **dead**: the largest activation over the index is <= ``DEAD_EPS`` (or no token is active);
  score 1.
- **dense**: active (> 0) on at least ``DENSE_FRACTION`` of all tokens; score = that share.
  Dead and dense neurons get no other flag (a dense neuron's top examples are arbitrary).
- **groups**: a neuron's *strong* examples are its top and quantile examples with at least half
  its largest activation. Each is keyed by its current token, normalised (stripped, lower
  case; all-digit tokens are one key ``<num>``, other no-space fragments of ``[A-Za-z0-9+/=]``
  one key ``<fragment>``). Two keys are *related* (same group) when they share a shape key,
  or *by context*: when at least half the examples of one key have a token of the other key
  in their window. Groups are the connected keys; a group is *significant* when it holds at
  least ``MIN_SHARE`` of the strong examples considered (and 2 of them).
- **polysemantic**: within some corpus (with >= ``MIN_EXAMPLES`` strong examples), two or more
  significant groups; score = the largest share of that corpus's strong examples outside its
  biggest group; detail names the groups.
- **illusion**: not polysemantic within any corpus, but two or more corpora each have one
  dominant group and those groups differ (are unrelated); score = the share of all strong
  examples outside the biggest group; detail says which group each corpus shows.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np

from indexer.analyses.common import IndexContext
from indexer.store.canned import DEAD_EPS
from indexer.store.schema import Flags

NAME = "flags"
TABLES = (Flags,)
DENSE_FRACTION = 0.5
MIN_SHARE = 0.15
MIN_EXAMPLES = 4
_FRAGMENT = re.compile(r"^[A-Za-z0-9+/=]+$")


def token_key(token: str) -> str:
    """The group key of a token: '<num>', '<fragment>' or the stripped lower-case text.

    >>> token_key(" 42"), token_key("Gd"), token_key(" Dog")
    ('<num>', '<fragment>', 'dog')
    """
    stripped = token.strip()
    if stripped.isdigit():
        return "<num>"
    if token == stripped and _FRAGMENT.match(token) and len(token) <= 3:
        return "<fragment>"
    return stripped.lower() or repr(token)


def run(ix: IndexContext) -> dict[type, dict[str, Any]]:
    neurons = ix.sql('SELECT site, layer, neuron, "max", frac_active FROM neurons')
    rows: dict[str, list] = {c: [] for c in Flags.columns()}

    def flag(site, layer, neuron, name, score, detail):
        for col, v in zip(Flags.columns(), (site, layer, neuron, name, float(score), detail)):
            rows[col].append(v)

    skip = set()
    for r in neurons.itertuples(index=False):
        if r.max <= DEAD_EPS or r.frac_active == 0:
            flag(r.site, r.layer, r.neuron, "dead", 1.0, f"largest activation {r.max:.3g}")
            skip.add((r.site, r.layer, r.neuron))
        elif r.frac_active >= DENSE_FRACTION:
            flag(r.site, r.layer, r.neuron, "dense", r.frac_active, f"active on {100 * r.frac_active:.0f}% of tokens")
            skip.add((r.site, r.layer, r.neuron))
    strong = ix.sql("""SELECT e.site, e.layer, e.neuron, e.corpus, e.token_str, e.window_token_ids
                       FROM examples e JOIN neurons n USING (site, layer, neuron)
                       WHERE e.activation >= 0.5 * n."max" AND n."max" > $eps""", {"eps": DEAD_EPS})
    for (site, layer, neuron), g in strong.groupby(["site", "layer", "neuron"]):
        if (site, layer, neuron) in skip:
            continue
        keys = [token_key(t) for t in g.token_str]
        windows = [{token_key(t) for t in ix.vocab[np.asarray(w)]} for w in g.window_token_ids]
        group_of = _groups(keys, windows)
        result = _judge(list(g.corpus), [group_of[k] for k in keys])
        if result:
            flag(site, layer, neuron, *result)
    return {Flags: rows}


def _groups(keys: list[str], windows: list[set[str]]) -> dict[str, str]:
    """key -> its group's name (the group's most common key, then alphabetical)."""
    counts = Counter(keys)
    parent = {k: k for k in counts}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    by_key: dict[str, list[set[str]]] = {}
    for k, w in zip(keys, windows):
        by_key.setdefault(k, []).append(w)
    for a in counts:
        for b in counts:
            if a < b and (_co_occur(by_key[a], b) or _co_occur(by_key[b], a)):
                parent[find(a)] = find(b)
    members: dict[str, list[str]] = {}
    for k in counts:
        members.setdefault(find(k), []).append(k)
    name = {root: sorted(ks, key=lambda k: (-counts[k], k))[0] for root, ks in members.items()}
    return {k: name[find(k)] for k in counts}


def _co_occur(windows: list[set[str]], other: str) -> bool:
    return sum(other in w for w in windows) >= 0.5 * len(windows)


def _significant(groups: list[str]) -> list[tuple[str, int]]:
    counts = Counter(groups).most_common()
    return [(g, n) for g, n in counts if n >= max(2, MIN_SHARE * len(groups))]


def _judge(corpora: list[str], groups: list[str]) -> tuple[str, float, str] | None:
    per_corpus: dict[str, list[str]] = {}
    for c, g in zip(corpora, groups):
        per_corpus.setdefault(c, []).append(g)
    poly = []
    dominant = {}
    for corpus, gs in sorted(per_corpus.items()):
        if len(gs) < MIN_EXAMPLES:
            continue
        sig = _significant(gs)
        if len(sig) >= 2:
            poly.append((1 - sig[0][1] / len(gs), corpus, sig))
        elif sig:
            dominant[corpus] = sig[0][0]
    if poly:
        score, corpus, sig = max(poly)
        names = ", ".join(f"{g!r} ({n})" for g, n in sig[:4])
        return "polysemantic", score, f"{len(sig)} unrelated groups in {corpus}: {names}"
    if len(set(dominant.values())) >= 2:
        overall = Counter(groups).most_common(1)[0][1]
        shown = "; ".join(f"{c}: {g!r}" for c, g in sorted(dominant.items()))
        return "illusion", 1 - overall / len(groups), f"monosemantic within each corpus, but {shown}"
    return None
