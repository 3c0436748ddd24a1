"""Canned queries: ``neuroscope sql DIR NAME`` runs the SQL filed under NAME.

Each returns at least layer, neuron (or head) and score, best first. Those over analysis
tables return no rows until ``neuroscope analyze`` has written them (the views exist, empty).
"""

from __future__ import annotations

from indexer.store.schema import HeadScores

# A neuron whose largest activation over the corpus is below this never really fires.
DEAD_EPS = 1e-6

_HEAD_SCORE_COLUMNS = [c for c in HeadScores.columns() if c not in ("layer", "head")]


def _head_kind_query(column: str) -> tuple[str, str]:
    return (
        f"heads ranked by their {column} score",
        f'SELECT layer, head, "{column}" AS score FROM head_scores ORDER BY score DESC, layer, head',
    )


CANNED: dict[str, tuple[str, str]] = {
    "dead-neurons": (
        f"neurons that never fire (frac_active = 0 or max <= {DEAD_EPS:g}); score = max, lowest first",
        f"""SELECT site, layer, neuron, "max" AS score, frac_active, n_tokens
FROM neurons
WHERE frac_active = 0 OR "max" <= {DEAD_EPS!r}
ORDER BY score ASC, layer, neuron""",
    ),
    "top-neurons": (
        "neurons by their largest activation; score = max",
        """SELECT site, layer, neuron, "max" AS score, mean, frac_active
FROM neurons
ORDER BY score DESC, layer, neuron""",
    ),
    "trigram-neurons": (
        "neurons explained by a trigram, with their best one (needs `neuroscope analyze`)",
        """SELECT site, layer, neuron, score, prev_token_str, token_str
FROM trigram_scores
QUALIFY row_number() OVER (PARTITION BY site, layer, neuron ORDER BY score DESC) = 1
ORDER BY score DESC, layer, neuron""",
    ),
    "base64-neurons": (
        "neurons that fire on base64 text; score = F1 of the base64 regex (needs `neuroscope analyze`)",
        """SELECT site, layer, neuron, f1 AS score, "precision", recall, pattern
FROM regex_scores
WHERE pattern_name = 'base64'
ORDER BY score DESC, layer, neuron""",
    ),
    "polysemantic-neurons": (
        "neurons flagged polysemantic (needs `neuroscope analyze`)",
        """SELECT site, layer, neuron, score, detail
FROM flags
WHERE flag = 'polysemantic'
ORDER BY score DESC, layer, neuron""",
    ),
    "head-scores": (
        f"every head's score for each known head type ({', '.join(_HEAD_SCORE_COLUMNS)}), best first",
        f"""SELECT layer, head, kind, score
FROM head_scores
UNPIVOT (score FOR kind IN ({", ".join(f'"{c}"' for c in _HEAD_SCORE_COLUMNS)}))
ORDER BY score DESC, layer, head, kind""",
    ),
    **{f"{c.replace('_', '-')}-heads": _head_kind_query(c) for c in _HEAD_SCORE_COLUMNS},
    "composing-heads": (
        "pairs of heads that compose most (Q-, K- or V-composition from the weights); score = composition",
        """SELECT layer_a, head_a, layer_b, head_b, kind, score, layer_b AS layer, head_b AS head
FROM head_composition
ORDER BY score DESC, layer_a, head_a, layer_b, head_b, kind""",
    ),
    "head-wiki": (
        "every head with all its scores; score = induction",
        """SELECT *, induction AS score FROM head_wiki ORDER BY score DESC, layer, head""",
    ),
}
