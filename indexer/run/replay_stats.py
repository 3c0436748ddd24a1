"""The per-feature numbers of a replay (table ``replay_features``), from the example rows of
one checkpoint (indexer.run.replay_forward).

For each feature, over its top and quantile examples in the source index:
- ``rank_correlation``: Spearman's rho of the checkpoint's activations against the index's
  (average ranks for ties); identical values (to float32 precision) count as 1, and values
  that are constant on either side, with no order to compare, give NaN;
- ``top_ratio``: mean activation over the top examples under the checkpoint / in the index;
- ``new_top_max``: the checkpoint's largest value on the original top examples' tokens;
- ``new_max``: its largest value anywhere in the contexts of the feature's examples (BOS left
  out), and where: the checkpoint's own max on those contexts;
- ``changed``: rank_correlation below ``CHANGED_CORRELATION`` or top_ratio outside
  [1 / ``CHANGED_RATIO``, ``CHANGED_RATIO``].
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

CHANGED_CORRELATION = 0.9
CHANGED_RATIO = 1.5


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two value lists (non-finite pairs left out).

    >>> rank_correlation(np.array([1.0, 2, 3]), np.array([10.0, 30, 20]))
    0.5
    >>> rank_correlation(np.array([0.5, 0.5]), np.array([0.5, 0.5])), math.isnan(rank_correlation(np.array([1.0, 2]), np.array([0.0, 0])))
    (1.0, True)
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) and np.allclose(a, b, rtol=1e-5, atol=1e-6):
        return 1.0
    if len(a) < 2:
        return math.nan
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return round(float(np.corrcoef(ra, rb)[0, 1]), 12)


def changed(correlation: float, ratio: float) -> bool:
    """Whether a feature moved past the thresholds (a NaN measure never counts as moved)."""
    order = correlation < CHANGED_CORRELATION
    scale = not math.isnan(ratio) and not 1 / CHANGED_RATIO <= ratio <= CHANGED_RATIO
    return bool(order or scale)


def feature_columns(rows: pd.DataFrame, vocab: np.ndarray, contexts: dict[int, np.ndarray]) -> dict[str, list]:
    """One entry per feature of ``rows`` (columns site, layer, neuron, kind, activation, new,
    ctx_max, ctx_argmax, ctx_id): the columns of ``replay_features`` but checkpoint and step."""
    out: dict[str, list] = {c: [] for c in ("site", "layer", "neuron", "n_examples", "rank_correlation", "top_ratio",
                                            "orig_max", "new_top_max", "new_max", "new_max_ctx_id", "new_max_pos",
                                            "new_max_token_str", "changed")}
    for (site, layer, neuron), g in rows.groupby(["site", "layer", "neuron"], sort=True):
        top = g[g["kind"] == "top"]
        orig_top = float(top["activation"].mean()) if len(top) else math.nan
        ratio = float(top["new"].mean()) / orig_top if orig_top > 0 else math.nan
        rho = rank_correlation(g["activation"].to_numpy(), g["new"].to_numpy())
        best = g["ctx_max"].to_numpy()
        i = int(np.nanargmax(best)) if np.isfinite(best).any() else 0
        ctx, pos = int(g["ctx_id"].iloc[i]), int(g["ctx_argmax"].iloc[i])
        token = contexts.get(ctx)
        for col, v in (("site", site), ("layer", layer), ("neuron", neuron), ("n_examples", len(g)),
                       ("rank_correlation", rho), ("top_ratio", ratio), ("orig_max", float(g["activation"].max())),
                       ("new_top_max", float(top["new"].max()) if len(top) else math.nan),
                       ("new_max", float(best[i])), ("new_max_ctx_id", ctx), ("new_max_pos", pos),
                       ("new_max_token_str", str(vocab[token[pos]]) if token is not None and pos < len(token) else ""),
                       ("changed", changed(rho, ratio))):
            out[col].append(v)
    return out
