"""Altair charts of the viewer: a feature's activation histogram, distributions over neurons."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd


def histogram(stats: dict, hist_edges: Sequence[float] | None, quantiles: Sequence[float] | None = None,
              x_domain: tuple[float, float] | None = None) -> dict | None:
    """The stored (symlog-binned) histogram as bars over value, the quantile edges as rules;
    ``x_domain`` fixes the value axis (features side by side share one).

    Returns a Vega-Lite spec: the chart is built with Altair once (``_histogram_template``) and
    only its data changes per feature, which keeps Altair's validation off the page's hot path.
    """
    counts = np.asarray(stats.get("hist") if stats.get("hist") is not None else [], dtype=float)
    edges = stats.get("hist_edges")
    edges = np.asarray(edges if edges is not None else (hist_edges or []), dtype=float)
    if counts.size == 0 or edges.size != counts.size + 1 or counts.sum() == 0:
        return None
    nz = np.nonzero(counts)[0]
    lo, hi = nz[0], nz[-1] + 1
    total = counts.sum()
    bars = [{"low": float(a), "high": float(b), "tokens": int(c), "share": float(c / total)}
            for a, b, c in zip(edges[lo:hi], edges[lo + 1:hi + 1], counts[lo:hi])]
    q_edges = [float(e) for e in stats.get("quantile_edges", [])]
    names = [f"q{q:g}" for q in (quantiles or [])][: len(q_edges)]
    names += [""] * (len(q_edges) - len(names))
    spec = copy.deepcopy(_histogram_template())
    spec["datasets"] = {"bars": bars, "edges": [{"edge": e, "quantile": n} for e, n in zip(q_edges, names)]}
    # A symlog axis gets ticks only at its ends by default: label every power of ten instead.
    top = int(counts.max())
    ticks = [0] + [10**i for i in range(len(str(top)))] + ([top] if top > 10 ** (len(str(top)) - 1) else [])
    spec["layer"][0]["encoding"]["y"]["axis"] = {"values": ticks, "labelExpr": "format(datum.value, ',')"}
    if x_domain is not None:
        spec["layer"][0]["encoding"]["x"]["scale"] = {"domain": [float(x_domain[0]), float(x_domain[1])]}
    return spec


@functools.cache
def _histogram_template() -> dict:
    base = alt.Chart(alt.Data(name="bars")).mark_bar(color="#ff7f2a").encode(
        x=alt.X("low:Q", title="activation"), x2="high:Q",
        y=alt.Y("tokens:Q", scale=alt.Scale(type="symlog"), title="tokens (symlog)"), y2=alt.datum(0),
        tooltip=[alt.Tooltip("low:Q", format=".4g"), alt.Tooltip("high:Q", format=".4g"), "tokens:Q",
                 alt.Tooltip("share:Q", format=".2%")],
    )
    rules = alt.Chart(alt.Data(name="edges")).mark_rule(color="#333", strokeDash=[4, 3]).encode(
        x="edge:Q", tooltip=["quantile:N", alt.Tooltip("edge:Q", format=".4g")]
    )
    spec = (base + rules).properties(height=220).to_dict()
    spec.pop("datasets", None)
    return spec


def distribution(values: pd.Series, title: str, log: bool = False) -> alt.Chart:
    """A histogram of one per-neuron statistic (density or max) over all neurons of a layer."""
    df = pd.DataFrame({"v": values.astype(float)})
    return alt.Chart(df).mark_bar(color="#4c78a8").encode(
        x=alt.X("v:Q", bin=alt.Bin(maxbins=40), title=title),
        y=alt.Y("count():Q", title="neurons", scale=alt.Scale(type="symlog") if log else alt.Undefined),
        tooltip=["count():Q"],
    ).properties(height=180)


def bar(df: pd.DataFrame, x: str, y: str, title: str = "") -> alt.Chart:
    return alt.Chart(df).mark_bar(color="#ff7f2a").encode(
        x=alt.X(f"{x}:Q", title=title or x), y=alt.Y(f"{y}:N", sort="-x", title=None), tooltip=[y, x]
    ).properties(height=max(60, 24 * len(df)))
