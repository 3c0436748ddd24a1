"""Regex checks: does a pattern predict "the neuron is active"?

Method. A sample of the index's stored contexts (``sample_tokens`` tokens, chosen by a hash of
the context id, so the same every run) is run through the model again, and every neuron site
is read at every token. A token is *active* when the neuron's activation is above a threshold
(default: half the neuron's largest activation over the whole index) and *predicted* when

- for the named library (``run``, the rows of ``regex_scores``): the token overlaps a match of
  the pattern in its context (``safe_regex.region_masks``): "inside a base64 run, a URL, a
  number", whether or not the run's first characters have been read yet;
- for one user pattern (``check``, ``neuroscope regex``): the text up to the token's end ends
  with a match (``safe_regex``: what a causal model can see at that token).

Over the sample's text tokens (BOS excluded):

- precision = P(active | predicted), recall = P(predicted | active), F1 their harmonic mean;
- specificity: how far the neuron's activity is confined to the pattern beyond the pattern's
  base rate (a lower confidence bound; ``indexer.pattern_score`` gives the formula and why F1
  misranks run-like patterns such as base64): what the canned queries rank by;
- correlation = Pearson correlation of the activation with the 0/1 prediction;
- top_fraction = share of the neuron's top examples (from the index) whose token overlaps a
  match in its stored window's text.

``check`` does this for one neuron and one user pattern (``neuroscope regex``), with a few
false positives and negatives in context. ``run`` scores the named library ``PATTERNS`` for
every neuron into ``regex_scores``; its patterns are RE2 syntax and run on RE2.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.analyses.common import IndexContext, Options
from indexer.safe_regex import DEFAULT_TIME_LIMIT_S, compile_pattern, region_hits, region_masks
from indexer.errors import ConfigError
from indexer.pattern_score import scores
from indexer.store.schema import RegexScores

NAME = "regex"
TABLES = (RegexScores,)
PATTERNS: dict[str, str] = {
    "base64": r"[A-Za-z0-9+/]{16,}={0,2}",
    "hex": r"0[xX][0-9a-fA-F]+|[0-9a-fA-F]{8,}",
    "digits": r"[0-9]+",
    "all_caps": r"\b[A-Z]{2,}",
    "url": r"https?://[^\s]*",
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]*)*",
    "indentation": r"\n[ \t]+",
    "open_bracket": r"[(\[{]",
    "close_bracket": r"[)\]}]",
    "quote": r"[\"'`]",
    "python_keyword": r"\b(?:def|class|return|import|from|elif|else|for|while|lambda|with|try|except|raise|yield|None|True|False)",
    "html_tag": r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?>?",
}
EXAMPLES_SHOWN = 5
CONTEXT_TOKENS = 12


def sample_contexts(ix: IndexContext, sample_tokens: int) -> dict[int, np.ndarray]:
    """Stored contexts in a fixed pseudo-random order (hash of ctx_id) up to ``sample_tokens``."""
    df = ix.sql("SELECT ctx_id, n_tokens FROM contexts ORDER BY hash(ctx_id), ctx_id")
    keep = np.cumsum(np.maximum(df.n_tokens.to_numpy() - 1, 0)) <= max(sample_tokens, 1)
    keep[:1] = True
    return ix.contexts(df.ctx_id.to_numpy()[keep]) if len(df) else {}


def run(ix: IndexContext) -> dict[type, dict[str, Any]]:
    """Score every named pattern for every neuron (the rows of ``regex_scores``)."""
    contexts = sample_contexts(ix, ix.options.sample_tokens)
    ids = list(contexts)
    strings = [ix.vocab[contexts[c]].tolist() for c in ids]
    bar = ix.bar(len(PATTERNS), "regex: matching patterns", unit="pattern")
    masks = {}
    for name, pattern in PATTERNS.items():
        masks[name] = region_masks(pattern, strings)
        bar.update(1)
    bar.close()
    layers = sorted({s["layer"] for s in ix.neuron_sites})
    thresholds = _thresholds(ix)
    sums: dict[tuple[str, int], _Sums] = {}
    every = ix.all_token_acts([contexts[c] for c in ids], layers, "regex: activations") if layers else ()  # heads only
    for i, acts in every:
        m = np.stack([masks[name][i][1:] for name in PATTERNS], axis=1).astype(np.float32)  # [tok, pattern]
        for key, a in acts.items():
            sums.setdefault(key, _Sums(len(PATTERNS), a.shape[1])).add(m, a[1:], thresholds[key])
    top = _top_fractions(ix)
    columns: dict[str, list] = {c: [] for c in RegexScores.columns()}
    for (site, layer), s in sums.items():
        metrics, corr = s.metrics()
        for p, (name, pattern) in enumerate(PATTERNS.items()):
            n = corr.shape[1]
            columns["site"] += [site] * n
            columns["layer"] += [layer] * n
            columns["neuron"] += list(range(n))
            columns["pattern_name"] += [name] * n
            columns["pattern"] += [pattern] * n
            for metric in ("precision", "recall", "f1", "base_rate", "specificity"):
                columns[metric] += metrics[metric][p].tolist()
            columns["n_active"] += s.active.astype(np.int64).tolist()
            columns["correlation"] += corr[p].tolist()
            columns["threshold"] += thresholds[(site, layer)].tolist()
            columns["top_fraction"] += top.get((site, layer, name), np.full(n, np.nan)).tolist()
    return {RegexScores: columns}


class _Sums:
    """Running sums for precision, recall and correlation of patterns [P] against neurons [N]."""

    def __init__(self, n_patterns: int, n_neurons: int):
        self.n = 0
        self.tp = np.zeros((n_patterns, n_neurons))
        self.matched = np.zeros(n_patterns)
        self.active = np.zeros(n_neurons)
        self.sum_a = np.zeros(n_neurons)
        self.sum_a2 = np.zeros(n_neurons)
        self.sum_ma = np.zeros((n_patterns, n_neurons))

    def add(self, m: np.ndarray, a: np.ndarray, threshold: np.ndarray) -> None:
        """m: [tok, pattern] 0/1; a: [tok, neuron] activations."""
        active = (a > threshold).astype(np.float32)
        self.n += len(a)
        self.tp += m.T @ active
        self.matched += m.sum(0)
        self.active += active.sum(0)
        a64 = a.astype(np.float64)
        self.sum_a += a64.sum(0)
        self.sum_a2 += (a64**2).sum(0)
        self.sum_ma += m.T.astype(np.float64) @ a64

    def metrics(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """pattern_score.scores ([pattern, neuron] each) and the correlation [pattern, neuron]."""
        found = scores(self.tp, self.matched[:, None], self.active[None, :], self.n)
        with np.errstate(divide="ignore", invalid="ignore"):
            n = max(self.n, 1)
            mean_m, mean_a = self.matched / n, self.sum_a / n
            cov = self.sum_ma / n - mean_m[:, None] * mean_a[None, :]
            var_m = mean_m * (1 - mean_m)
            var_a = np.maximum(self.sum_a2 / n - mean_a**2, 0)
            corr = np.nan_to_num(cov / np.sqrt(var_m[:, None] * var_a[None, :]))
        return found, corr


def _thresholds(ix: IndexContext, fraction: float = 0.5) -> dict[tuple[str, int], np.ndarray]:
    df = ix.sql('SELECT site, layer, neuron, "max" FROM neurons ORDER BY site, layer, neuron')
    out = {}
    for (site, layer), g in df.groupby(["site", "layer"]):
        t = np.full(int(g.neuron.max()) + 1, np.inf)
        mx = g["max"].to_numpy()
        t[g.neuron.to_numpy()] = np.where(mx > 0, fraction * mx, np.inf)  # a dead neuron is never active
        out[(site, int(layer))] = t
    return out


def _top_fractions(ix: IndexContext) -> dict[tuple[str, int, str], np.ndarray]:
    """(site, layer, pattern) -> per neuron, the share of top examples whose token overlaps a
    match of the pattern in the example's stored window."""
    df = ix.sql("""SELECT site, layer, neuron, pos, window_start, window_token_ids FROM examples
                   WHERE kind = 'top' ORDER BY site, layer, neuron, rank""")
    if df.empty:
        return {}
    windows = [ix.vocab[np.asarray(w)].tolist() for w in df.window_token_ids]
    at = (df.pos - df.window_start).to_numpy()
    out = {}
    for name, pattern in PATTERNS.items():
        hit = region_hits(pattern, windows, at).astype(np.float64)
        for (site, layer), g in df.assign(hit=hit).groupby(["site", "layer"]):
            share = g.groupby("neuron").hit.mean()
            arr = np.full(int(g.neuron.max()) + 1, np.nan)
            arr[share.index.to_numpy()] = share.to_numpy()
            out[(site, int(layer), name)] = arr
    return out


def check(index_dir, layer: int, neuron: int, pattern: str, site: str | None = None, threshold: float | None = None,
          sample_tokens: int = 50_000, time_limit_s: float = DEFAULT_TIME_LIMIT_S, options: Options | None = None) -> dict:
    """How well ``pattern`` predicts one neuron: precision, recall, F1, correlation, and a few
    false positives and negatives with their contexts (what ``neuroscope regex`` prints)."""
    safe = compile_pattern(pattern, time_limit_s)
    ix = IndexContext(index_dir, options or Options(progress=False))
    try:
        site = site or ix.output_site(layer)
        sites = ix.sites_of_layer(layer, latents=True)
        if site not in sites:
            raise ConfigError(f"--site {site} --layer {layer}: the index has sites {sites or 'none'} at layer {layer}")
        width = next(s["n_features"] for s in ix.neuron_sites if s["name"] == site and s["layer"] == layer)
        if not 0 <= neuron < width:
            raise ConfigError(f"--neuron {neuron}: {site} of layer {layer} has neurons 0..{width - 1}")
        if threshold is None:
            mx = ix.sql('SELECT "max" FROM neurons WHERE site = $s AND layer = $l AND neuron = $n',
                        {"s": site, "l": layer, "n": neuron})["max"]
            threshold = 0.5 * float(mx.iloc[0]) if len(mx) and float(mx.iloc[0]) > 0 else 0.0
        contexts = sample_contexts(ix, sample_tokens)
        ids = list(contexts)
        strings = [ix.vocab[contexts[c]].tolist() for c in ids]
        masks = safe.token_masks(strings)
        acts = [a[(site, layer)][:, neuron] for _, a in ix.all_token_acts([contexts[c] for c in ids], [layer], "regex check")]
    finally:
        ix.close()
    return _report(safe, site, layer, neuron, threshold, ids, strings, masks, acts)


def _report(safe, site, layer, neuron, threshold, ids, strings, masks, acts) -> dict:
    m = np.concatenate([x[1:] for x in masks]) if masks else np.zeros(0, bool)
    a = np.concatenate([x[1:] for x in acts]) if acts else np.zeros(0)
    where = [(c, p) for c, s in zip(ids, strings) for p in range(1, len(s))]
    active = a > threshold
    found = {k: float(v) for k, v in scores(int((m & active).sum()), int(m.sum()), int(active.sum()), len(a)).items()}
    corr = float(np.corrcoef(m.astype(float), a)[0, 1]) if len(a) > 1 and m.std() > 0 and a.std() > 0 else 0.0
    text_of = dict(zip(ids, strings))

    def shown(selector: np.ndarray, order: np.ndarray) -> list[dict]:
        rows = []
        for i in order[selector[order]][:EXAMPLES_SHOWN]:
            ctx, pos = where[i]
            toks = text_of[ctx]
            rows.append({"ctx_id": ctx, "pos": pos, "token": toks[pos], "activation": round(float(a[i]), 4),
                         "context": "".join(toks[max(1, pos - CONTEXT_TOKENS) : pos]) + "[[" + toks[pos] + "]]"})
        return rows

    return {
        "site": site, "layer": layer, "neuron": neuron, "pattern": safe.pattern, "engine": safe.engine,
        "note": safe.engine_note, "threshold": threshold, "tokens": int(len(a)), "matched": int(m.sum()),
        "active": int(active.sum()), **found, "correlation": corr,
        "false_positives": shown(m & ~active, np.argsort(a, kind="stable")),  # the least active first
        "false_negatives": shown(active & ~m, np.argsort(-a, kind="stable")),  # the most active first
    }
