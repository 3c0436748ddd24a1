"""Canned queries: ``neuroscope sql DIR NAME`` runs the SQL filed under NAME.

Each returns at least layer, neuron (or head) and score, best first. Those over analysis
tables return no rows until ``neuroscope analyze`` has written them (the views exist, empty).
"""

from __future__ import annotations

from indexer.config import RANDOM_OF, RANDOM_SITE
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
        f"""SELECT site, layer, neuron, "max" AS score, frac_active, n_tokens,
  printf('largest activation %.3g over %d tokens', "max", n_tokens) AS reason
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
        "neurons that need both the previous and the current token (a causal test); score = pair share x "
        "(1 - survival without the previous token) x (1 - without the current) x (survival without the one before)",
        """SELECT site, layer, neuron, score, prev_token_str, token_str,
  printf('fires on %s%s: %.0f%% of top examples; keeps %.0f%% without the previous token, %.0f%% without the current one',
         prev_token_str, token_str, 100 * pair_share, 100 * prev_survival, 100 * current_survival) AS reason
FROM trigram_scores
QUALIFY row_number() OVER (PARTITION BY site, layer, neuron ORDER BY score DESC) = 1
ORDER BY score DESC, layer, neuron""",
    ),
    "base64-neurons": (
        "neurons whose activity is confined to base64 runs beyond chance; score = specificity of the base64 "
        "pattern (indexer/pattern_score.py), ties by the share of top examples inside a run",
        """SELECT site, layer, neuron, specificity AS score, recall, base_rate, top_fraction, "precision", f1,
  printf('%.0f%% of its %d active tokens inside base64 runs (which hold %.1f%% of tokens); %.0f%% of top examples in a run',
         100 * recall, n_active, 100 * base_rate, 100 * coalesce(top_fraction, 0)) AS reason
FROM regex_scores
WHERE pattern_name = 'base64'
ORDER BY score DESC, top_fraction DESC NULLS LAST, layer, neuron""",
    ),
    "pattern-neurons": (
        "pattern-neurons NAME: neurons whose activity is confined to one named pattern of the regex library "
        "(base64, hex, digits, url, open_bracket, ...); score = specificity",
        """SELECT site, layer, neuron, specificity AS score, recall, base_rate, top_fraction, "precision", f1,
  printf('%.0f%% of its %d active tokens match %s (which matches %.1f%% of tokens)',
         100 * recall, n_active, pattern_name, 100 * base_rate) AS reason
FROM regex_scores
WHERE pattern_name = $pattern
ORDER BY score DESC, top_fraction DESC NULLS LAST, layer, neuron""",
    ),
    "regex-neurons": (
        "each neuron's best named pattern, where the neuron's activity is confined to it (specificity at least "
        "0.5); score = specificity, ties to the rarer pattern",
        """SELECT site, layer, neuron, specificity AS score, pattern_name, recall, base_rate, "precision", f1, correlation,
  printf('%s: %.0f%% of its %d active tokens match (the pattern matches %.1f%% of tokens)',
         pattern_name, 100 * recall, n_active, 100 * base_rate) AS reason
FROM regex_scores
WHERE specificity >= 0.5
QUALIFY row_number() OVER (PARTITION BY site, layer, neuron ORDER BY specificity DESC, base_rate, pattern_name) = 1
ORDER BY score DESC, layer, neuron""",
    ),
    "dense-neurons": (
        "neurons flagged dense: active on a large share of all tokens; score = share of tokens active",
        """SELECT site, layer, neuron, score, detail AS reason
FROM flags
WHERE flag = 'dense'
ORDER BY score DESC, layer, neuron""",
    ),
    "polysemantic-neurons": (
        "neurons whose strong examples fall into two or more unrelated groups within a corpus; "
        "score = share of those examples outside the largest group (needs `neuroscope analyze`)",
        """SELECT site, layer, neuron, score, detail AS reason
FROM flags
WHERE flag = 'polysemantic'
ORDER BY score DESC, layer, neuron""",
    ),
    "illusion-neurons": (
        "neurons that look monosemantic within each corpus but whose groups differ between corpora; "
        "score = share of strong examples outside the largest group overall",
        """SELECT site, layer, neuron, score, detail AS reason
FROM flags
WHERE flag = 'illusion'
ORDER BY score DESC, layer, neuron""",
    ),
    "logit-agreement": (
        "neurons whose output boosts the tokens that follow their top examples; score = mean percentile "
        "of those tokens among the neuron's logit effects (0.5 = chance)",
        """SELECT site, layer, neuron, score, top10_hit_rate,
  printf('next tokens of %d top examples sit at the %.0fth percentile of the boosts; %.0f%% in the top 10',
         n_examples, 100 * score, 100 * top10_hit_rate) AS reason
FROM logit_agreement
ORDER BY score DESC, layer, neuron""",
    ),
    "site-agreement": (
        "per neuron, how many top-k contexts two indexed sites of its layer share (SoLU: pre, mid, post); "
        "least consistent first; score = overlap",
        """SELECT site_a || '~' || site_b AS site, layer, neuron, top_k_overlap AS score, site_a, site_b,
  printf('%s and %s share %.0f%% of their top-%d contexts', site_a, site_b, 100 * top_k_overlap, k) AS reason
FROM site_agreement
ORDER BY score ASC, layer, neuron, site_a, site_b""",
    ),
    "random-baseline": (
        f"real neurons ({RANDOM_OF}) against random directions of their space (--sites {RANDOM_SITE}:K[:SEED]), one row "
        "per layer and statistic (density, max z-score, top-example token concentration; with `neuroscope analyze`: "
        "regex specificity, polysemantic flags); score = relative difference |neurons - random| / max(|neurons|, "
        "|random|), largest first; neuron is NULL (a summary over the layer)",
        f"""WITH per AS (
  SELECT n.site, n.layer, n.neuron, n.frac_active, ("max" - mean) / nullif(std, 0) AS max_z, t.concentration,
    s.best_specificity, f.polysemantic, f.skipped
  FROM neurons n
  LEFT JOIN (SELECT site, layer, neuron, max(n) / sum(n) AS concentration
             FROM (SELECT site, layer, neuron, token_str, count(*) AS n FROM examples WHERE kind = 'top' GROUP BY ALL)
             GROUP BY ALL) t USING (site, layer, neuron)
  LEFT JOIN (SELECT site, layer, neuron, max(specificity) AS best_specificity FROM regex_scores GROUP BY ALL) s
    USING (site, layer, neuron)
  LEFT JOIN (SELECT site, layer, neuron, bool_or(flag = 'polysemantic') AS polysemantic,
                    bool_or(flag IN ('dead', 'dense')) AS skipped FROM flags GROUP BY ALL) f USING (site, layer, neuron)
  WHERE n.site IN ('{RANDOM_OF}', '{RANDOM_SITE}')
),
by_kind AS (
  SELECT layer, site, count(*) AS n,
    avg(CASE WHEN frac_active >= 0.5 THEN 1.0 ELSE 0.0 END) AS dense_share,
    median(frac_active) AS median_frac_active,
    median(max_z) AS median_max_z,
    avg(concentration) AS top_token_concentration,
    CASE WHEN (SELECT count(*) FROM flags) > 0 THEN
      avg(CASE WHEN coalesce(skipped, false) THEN NULL WHEN polysemantic THEN 1.0 ELSE 0.0 END) END AS polysemantic_share,
    avg(best_specificity) AS mean_best_specificity,
    avg(CASE WHEN best_specificity >= 0.5 THEN 1.0 WHEN best_specificity IS NOT NULL THEN 0.0 END) AS regex_explained_share
  FROM per GROUP BY layer, site
),
long AS (
  UNPIVOT by_kind ON dense_share, median_frac_active, median_max_z, top_token_concentration, polysemantic_share,
                     mean_best_specificity, regex_explained_share
  INTO NAME statistic VALUE value
)
SELECT r.layer, CAST(NULL AS INTEGER) AS neuron, r.statistic, n.value AS neurons, r.value AS random,
  coalesce(abs(n.value - r.value) / nullif(greatest(abs(n.value), abs(r.value)), 0), 0) AS score,
  m.n AS n_neurons, m.k AS n_random,
  printf('%s: %.3g over the %d neurons, %.3g over the %d random directions', r.statistic, n.value, m.n, r.value,
         m.k) AS reason
FROM long r
JOIN long n ON n.layer = r.layer AND n.statistic = r.statistic AND n.site = '{RANDOM_OF}'
JOIN (SELECT layer, max(CASE WHEN site = '{RANDOM_OF}' THEN n END) AS n, max(CASE WHEN site = '{RANDOM_SITE}' THEN n END) AS k
      FROM by_kind GROUP BY layer) m ON m.layer = r.layer
WHERE r.site = '{RANDOM_SITE}'
ORDER BY score DESC, layer, statistic""",
    ),
    "replay-changed": (
        "in a replay folder (`neuroscope replay`): the features flagged changed under some checkpoint; score = "
        "1 - rank correlation of their examples' activations (the most reordered first)",
        """SELECT site, layer, neuron, checkpoint, step, 1 - coalesce(rank_correlation, 0) AS score, rank_correlation,
  top_ratio, new_max, orig_max,
  printf('under %s: rank correlation %s, top examples at %s of their activation, max on their contexts %.3g (was %.3g)',
         checkpoint, coalesce(printf('%.2f', rank_correlation), 'undefined'),
         coalesce(printf('%.0f%%', 100 * top_ratio), '?'), new_max, orig_max) AS reason
FROM replay_features
WHERE changed
ORDER BY score DESC, step, layer, neuron""",
    ),
    "token-neurons": (
        "token-neurons TOKEN: neurons whose top examples are mostly TOKEN; score = that share, times the "
        "activation kept when the previous token is replaced (if the trigram analysis ran)",
        """SELECT site, layer, neuron,
  avg(CASE WHEN token_str = $token OR trim(token_str) = trim($token) THEN 1.0 ELSE 0.0 END)
    * least(coalesce(any_value(prev_survival), 1.0), 1.0) AS score,
  printf('%d of %d top examples are the token; %s', CAST(sum(CASE WHEN token_str = $token OR trim(token_str) = trim($token) THEN 1 ELSE 0 END) AS INTEGER),
         CAST(count(*) AS INTEGER),
         CASE WHEN any_value(prev_survival) IS NULL THEN 'no trigram test yet'
              ELSE printf('%.0f%% kept without the previous token', 100 * any_value(prev_survival)) END) AS reason
FROM examples LEFT JOIN (SELECT site, layer, neuron, max(prev_survival) AS prev_survival FROM trigram_scores GROUP BY ALL)
  USING (site, layer, neuron)
WHERE kind = 'top'
GROUP BY site, layer, neuron
HAVING sum(CASE WHEN token_str = $token OR trim(token_str) = trim($token) THEN 1 ELSE 0 END) > 0
ORDER BY score DESC, layer, neuron""",
    ),
    "top-neurons-for-token": (
        "top-neurons-for-token TOKEN: neurons with the largest activation on TOKEN among their examples; score = that activation",
        """SELECT site, layer, neuron, max(activation) AS score,
  printf('max %.3g on %s (%d examples on it)', max(activation), any_value(token_str), CAST(count(*) AS INTEGER)) AS reason
FROM examples
WHERE token_str = $token OR trim(token_str) = trim($token)
GROUP BY site, layer, neuron
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


# Canned queries that take one argument (``NAME ARG``), bound as the named parameter here.
PARAMETERS: dict[str, str] = {"token-neurons": "token", "top-neurons-for-token": "token", "pattern-neurons": "pattern"}
# The values an argument can take, where the index lists them (a value not listed is an error).
ARGUMENT_VALUES: dict[str, str] = {"pattern-neurons": "SELECT DISTINCT pattern_name FROM regex_scores ORDER BY 1"}
