"""How well a pattern explains a neuron, from four counts over the tokens scored: ``n`` tokens,
``matched`` (the pattern matches at the token), ``active`` (the neuron is above its threshold),
``tp`` (both). Shared by the regex analysis, ``neuroscope regex`` and ``Index.regex_check``.

- precision = tp / matched = P(active | match), recall = tp / active = P(match | active), F1.
- **specificity**: how far the neuron's activity is confined to the pattern beyond chance,

      specificity = max(0, (L - base_rate) / (1 - base_rate))

  where base_rate = matched / n (the share of tokens the pattern matches) and L is the Wilson
  95% lower bound of recall (so a handful of active tokens cannot score high by luck). It is 1
  when every active token is inside the pattern (with enough of them), 0 when the neuron is
  active inside the pattern no more often than anywhere else.

Why not F1: a pattern that matches every token of a run (base64, a URL, a number) "predicts"
many tokens a neuron of that pattern need not fire on, so precision, and with it F1, stays
small for a neuron that fires on some tokens of every run and never outside one. And a dense
neuron, active almost everywhere, has a high precision for any pattern. Specificity asks the
question the canned queries mean ("when this neuron fires, is it inside the pattern, more than
chance?"); the enrichment is judged against the base rate, so a dense neuron scores near 0.
"""

from __future__ import annotations

import numpy as np

Z = 1.96  # the Wilson bound's z: a 95% two-sided interval


def wilson_lower(successes: np.ndarray, trials: np.ndarray, z: float = Z) -> np.ndarray:
    """The Wilson score interval's lower bound of successes / trials (0 where trials = 0)."""
    k = np.asarray(successes, np.float64)
    n = np.asarray(trials, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        centre = p + z * z / (2 * n)
        margin = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        low = (centre - margin) / (1 + z * z / n)
    return np.where((n > 0) & (k > 0), np.clip(np.nan_to_num(low), 0.0, 1.0), 0.0)  # k = 0: exactly 0


def scores(tp: np.ndarray, matched: np.ndarray, active: np.ndarray, n: np.ndarray | int) -> dict[str, np.ndarray]:
    """precision, recall, f1, base_rate and specificity (arrays broadcast from the counts)."""
    tp, matched, active = (np.asarray(x, np.float64) for x in (tp, matched, active))
    n = np.asarray(n, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / matched)
        recall = np.nan_to_num(tp / active)
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
        base = np.nan_to_num(matched / n)
        spec = np.where(base < 1, (wilson_lower(tp, active) - base) / np.where(base < 1, 1 - base, 1), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "base_rate": np.broadcast_to(base, f1.shape).copy(),
            "specificity": np.clip(spec, 0.0, 1.0)}
