"""Flags: dead, dense, polysemantic and interpretability-illusion neurons (read from the index;
no model needed).

Method.
- **dead**: the largest activation over the index is <= ``DEAD_EPS`` (or no token is active);
  score 1.
- **dense**: active (> 0) on at least ``DENSE_FRACTION`` of all tokens; score = that share.
  Dead and dense neurons get no other flag (a dense neuron's top examples are arbitrary).
- **groups**: a neuron's *strong* examples are its top and quantile examples with at least half
  its largest activation. Each is keyed by its current token, normalised (stripped, lower
  case; whitespace-only tokens are one key ``<space>``, tokens without a letter or digit one
  key ``<punct>``, all-digit tokens ``<num>``, other short no-space fragments of
  ``[A-Za-z0-9+/=]`` ``<fragment>``). Two keys are *related* (same group) when they share a
  shape key, or *by context*: when at least half the examples of one key have a token of
  the other key in their window. Groups are the connected keys.
- A corpus is judged only with >= ``MIN_EXAMPLES`` (6) strong examples. A group is
  *significant* in it with >= ``MIN_SHARE`` (25%) of them and >= ``MIN_GROUP`` (3).
- **polysemantic**: in some corpus, >= 2 significant groups that together hold >=
  ``MIN_COVER`` (70%) of its strong examples (a neuron spread over many small groups is
  diffuse or context-driven, not two-meaning), and no two of them share context (fewer
  than ``LINK`` (25%) of either group's windows hold a token of the other). Score = the
  second group's share; detail names the groups and the number of strong examples.
- **illusion**: not polysemantic; >= 2 judged corpora each monosemantic (one significant
  group holding >= 70%), their groups differ, and each corpus's group holds at most
  ``ILLUSION_LEAK`` (10%) of the other corpus's strong examples. Score = share of all strong
  examples outside the biggest group; detail says which group each corpus shows.

On a 20k-token toy-1l index (both corpora, top_k 20): 219 dense, 2 polysemantic, 0 illusion
of 1024 neurons (the first, looser version: 38 polysemantic, 11 illusion). Token identity cannot see
meaning: two groups of related words (' must' / ' will') still count as unrelated.
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
MIN_SHARE = 0.25  # a group is significant with this share of a corpus's strong examples...
MIN_GROUP = 3  # ...and at least this many of them
MIN_COVER = 0.7  # the significant groups must hold this share (else the neuron is diffuse)
MIN_EXAMPLES = 6  # strong examples a corpus needs before it is judged
LINK = 0.25  # groups are related when this share of one's windows holds a token of the other
ILLUSION_LEAK = 0.1  # for illusion, another corpus's group holds at most this share here
_FRAGMENT = re.compile(r"^[A-Za-z0-9+/=]+$")


def token_key(token: str) -> str:
    """The group key of a token: '<num>', '<fragment>' or the stripped lower-case text.

    >>> token_key(" 42"), token_key("Gd"), token_key(" Dog"), token_key("\\n    "), token_key(" ..")
    ('<num>', '<fragment>', 'dog', '<space>', '<punct>')
    """
    stripped = token.strip()
    if not stripped:
        return "<space>"
    if not any(ch.isalnum() for ch in stripped):
        return "<punct>"
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
    key_of = np.array([token_key(t) for t in ix.vocab], object)  # a token id's key, computed once
    for (site, layer, neuron), g in strong.groupby(["site", "layer", "neuron"]):
        if (site, layer, neuron) in skip:
            continue
        keys = [token_key(t) for t in g.token_str]
        windows = [set(key_of[np.asarray(w, np.int64)].tolist()) for w in g.window_token_ids]
        group_of = _groups(keys, windows)
        result = _judge(list(g.corpus), [group_of[k] for k in keys], keys, windows)
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


def _linked(a: list[set[str]], b_keys: set[str]) -> float:
    """Share of one group's examples whose window holds a key of the other group."""
    return sum(bool(w & b_keys) for w in a) / max(1, len(a))


def _significant(groups: list[str]) -> list[tuple[str, int]]:
    counts = Counter(groups).most_common()
    return [(g, n) for g, n in counts if n >= max(MIN_GROUP, MIN_SHARE * len(groups))]


def _judge(corpora: list[str], groups: list[str], keys: list[str], windows: list[set[str]]) -> tuple[str, float, str] | None:
    members: dict[str, set[str]] = {}
    for k, g in zip(keys, groups):
        members.setdefault(g, set()).add(k)
    per_corpus: dict[str, list[int]] = {}
    for i, c in enumerate(corpora):
        per_corpus.setdefault(c, []).append(i)
    poly = []
    dominant: dict[str, str] = {}
    shares: dict[str, Counter] = {}
    for corpus, idx in sorted(per_corpus.items()):
        gs = [groups[i] for i in idx]
        shares[corpus] = Counter(gs)
        if len(gs) < MIN_EXAMPLES:
            continue
        sig = _significant(gs)
        covered = sum(n for _, n in sig) / len(gs)
        if len(sig) >= 2 and covered >= MIN_COVER and _unrelated(sig, idx, groups, windows, members):
            poly.append((sig[1][1] / len(gs), corpus, sig, len(gs)))
        elif len(sig) == 1 and covered >= MIN_COVER:
            dominant[corpus] = sig[0][0]
    if poly:
        score, corpus, sig, n = max(poly)
        names = ", ".join(f"{g!r} ({k})" for g, k in sig[:4])
        return "polysemantic", score, f"{len(sig)} unrelated groups in {corpus} ({n} strong examples): {names}"
    if len(set(dominant.values())) >= 2 and all(
        shares[c][g] <= ILLUSION_LEAK * sum(shares[c].values())
        for c in dominant for g in set(dominant.values()) - {dominant[c]}
    ):
        overall = Counter(groups).most_common(1)[0][1]
        shown = "; ".join(f"{c}: {g!r}" for c, g in sorted(dominant.items()))
        return "illusion", 1 - overall / len(groups), f"monosemantic within each corpus, but {shown}"
    return None


def _unrelated(sig, idx, groups, windows, members) -> bool:
    """No two significant groups share context: fewer than LINK of either's examples have a
    token of the other in their window."""
    win = {g: [windows[i] for i in idx if groups[i] == g] for g, _ in sig}
    for i, (a, _) in enumerate(sig):
        for b, _ in sig[i + 1:]:
            if _linked(win[a], members[b]) >= LINK or _linked(win[b], members[a]) >= LINK:
                return False
    return True
