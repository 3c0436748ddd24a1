"""HTML for token-coloured examples, shared by the app and the static export.

Corpus text is untrusted: every string from the index goes through ``esc``, which escapes HTML
and also the characters Markdown, LaTeX and templates would act on, so ``<script>``,
``<img onerror=...>`` or ``[a](javascript:...)`` show as text wherever the HTML lands.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

# Escaped beyond html.escape: Markdown ([]()*_`#|~!), LaTeX ($), template braces and backslash.
_ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;",
           **{c: f"&#{ord(c)};" for c in "[]()*_`#|~!$\\{}"}}
_TABLE = str.maketrans(_ENTITY)

CSS = """
.ns-ex{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;line-height:1.9;
white-space:pre-wrap;word-break:break-word;padding:6px 8px;border:1px solid #e3e3e3;border-radius:6px;
background:#fff;color:#111;margin:2px 0 8px 0}
.ns-tok{border-radius:3px;padding:1px 0}
.ns-max{outline:2px solid #b00020;outline-offset:0;font-weight:700}
.ns-out{color:#888}
.ns-head{font-size:13px;color:#444;margin:6px 0 0 0;font-family:sans-serif}
.ns-head b.ns-val{color:#b00020}
.ns-head code{background:#f3f3f3;padding:0 3px;border-radius:3px;white-space:pre}
.ns-ctx summary{cursor:pointer;font-size:13px;color:#555;font-family:sans-serif;margin:-4px 0 8px 0}
.ns-bin{font-family:sans-serif;font-size:15px;margin:14px 0 2px 0}
.ns-table{border-collapse:collapse;font-size:14px}
.ns-table td,.ns-table th{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left}
.ns-attn{font-family:sans-serif;font-size:12px;color:#00704a;margin:-6px 0 8px 8px}
.ns-attn code{background:#eef7f2;padding:0 3px;border-radius:3px}
"""

# Where a head example attends: (source context positions, weights), as head_attention stores them.
Attention = tuple[Sequence[int], Sequence[float]]

# A token is underlined as salient when replacing it drops the activation by at least this share.
SALIENT = 0.1
# How many sources outside an example's window are named under it (largest weights first).
MAX_ATTN_NOTES = 5
# What a head metric's top examples mean when it is not "where the head is most active".
METRIC_NOTES = {
    "entropy": "its top examples are where this head's attention is most diffuse (spread over many tokens, "
               "often an idle head), not where the head is most active",
}


def esc(text: object) -> str:
    """``text`` escaped for HTML (quotes too) and for Markdown/LaTeX re-interpretation."""
    return str(text).translate(_TABLE)


def attr(text: object) -> str:
    """``text`` escaped for an HTML attribute value such as a link (HTML escaping only)."""
    return html.escape(str(text), quote=True)


def show_token(token: str) -> str:
    """A token as displayed: newlines and tabs get a visible mark (and still break the line)."""
    return token.replace("\n", "\u21b5\n").replace("\t", "\u2192\t")


def colour(value: float, vmax: float, vmin: float) -> str:
    """Background for a value: orange-red for positive, blue for negative, both relative to the
    feature's largest magnitude (so a GELU's small negative dip stays nearly white)."""
    scale = max(vmax, -vmin, 0.0)
    if not math.isfinite(value) or scale <= 0:
        return "transparent"
    a = min(abs(value) / scale, 1.0)
    if a < 0.02:
        return "transparent"
    return f"rgba(255,96,0,{a:.2f})" if value > 0 else f"rgba(40,110,255,{a * 0.6:.2f})"


def salience_colour(drop: float) -> str:
    """The underline of a token that matters: purple, more opaque for a larger relative drop."""
    a = min(max(float(drop), 0.0), 1.0)
    return f"rgba(120,40,200,{0.3 + 0.7 * a:.2f})"


def attn_colour(weight: float) -> str:
    """The underline of a source token: green, more opaque for more attention."""
    a = min(max(float(weight), 0.0), 1.0)
    return f"rgba(0,140,80,{0.25 + 0.75 * a:.2f})"


def token_spans(tokens: Sequence[str], values: Sequence[float | None], mark: int | None,
                vmax: float, vmin: float, attn: Mapping[int, float] | None = None,
                salience: Mapping[int, float] | None = None) -> str:
    """One ``<span>`` per token, coloured by its value, the value in its hover title; token
    ``mark`` (an index into ``tokens``) gets the max-token outline. None values are uncoloured;
    NaN ones (a token the feature did not see) too, and say so in their title.
    ``attn`` (index -> weight): the tokens the marked one attends to, underlined in green by
    weight, ``attn w`` in their hover title. ``salience`` (index -> relative drop of the
    activation when the token is replaced, ``token_saliency``): the tokens that matter,
    underlined in purple by drop."""
    parts = []
    for i, (tok, val) in enumerate(zip(tokens, values)):
        text = esc(show_token(tok))
        w = attn.get(i) if attn else None
        src = "" if w is None else f";box-shadow:inset 0 -4px 0 {attn_colour(w)}"
        note = "" if w is None else f" · attn {w:.3g}"
        d = salience.get(i) if salience else None
        if d is not None and d >= SALIENT:
            src += f";text-decoration:underline 3px {salience_colour(d)};text-underline-offset:4px"
            note += f" · drop {d:.0%} when replaced"
        if val is None:
            if not src:
                parts.append(f'<span class="ns-out">{text}</span>')
            else:
                parts.append(f'<span class="ns-out ns-src" style="{src[1:]}" title="{esc(f"{tok!r}{note}")}">{text}</span>')
            continue
        cls = "ns-tok ns-max" if i == mark else "ns-tok"
        cls += "" if w is None else " ns-src"
        seen = f"{val:.4g}" if val == val else "not seen (an expert neuron: not routed to its expert)"
        title = esc(f"{tok!r}: {seen}{note}")
        parts.append(f'<span class="{cls}" style="background:{colour(val, vmax, vmin)}{src}" title="{title}">{text}</span>')
    return "".join(parts)


def example_html(row: dict, vocab: Sequence[str], vmax: float, vmin: float,
                 context: Sequence[int] | None = None, attention: Attention | None = None,
                 salience: Mapping[int, float] | None = None) -> str:
    """One example's text: its window coloured (or, given ``context``, the whole stored context
    with the window coloured and the rest plain), the example's token marked; ``attention``
    (source positions, weights) underlines the tokens it attends to, ``salience`` (context
    position -> relative drop) the tokens its activation depends on."""
    ids = [int(t) for t in row["window_token_ids"]]
    values = [float(v) for v in row["window_acts"]]
    start = int(row["window_start"])
    mark = int(row["pos"]) - start
    src = {int(p): float(w) for p, w in zip(*attention)} if attention else {}
    if context is not None:
        full = [int(t) for t in context]
        vals: list[float | None] = [None] * len(full)
        for i, v in enumerate(values):
            if 0 <= start + i < len(full):
                vals[start + i] = v
        attn = {p: w for p, w in src.items() if 0 <= p < len(full)}
        return (f'<div class="ns-ex">{token_spans([_tok(vocab, t) for t in full], vals, int(row["pos"]), vmax, vmin, attn, salience)}'
                '</div>')
    attn = {p - start: w for p, w in src.items() if 0 <= p - start < len(ids)}
    near = {p - start: d for p, d in (salience or {}).items() if 0 <= p - start < len(ids)}
    return f'<div class="ns-ex">{token_spans([_tok(vocab, t) for t in ids], values, mark, vmax, vmin, attn, near)}</div>'


def attention_notes(row: dict, attention: Attention | None, vocab: Sequence[str],
                    context: Sequence[int] | None) -> str:
    """``← attends to 'tok' at pos P (w)`` for each source outside the example's window (the
    largest MAX_ATTN_NOTES); the token is named from ``context`` (the stored context), '?' without it."""
    if not attention:
        return ""
    start, n = int(row["window_start"]), len(row["window_token_ids"])
    outside = sorted(((int(p), float(w)) for p, w in zip(*attention) if not 0 <= int(p) - start < n),
                     key=lambda pw: -pw[1])
    if not outside:
        return ""
    notes = []
    for p, w in outside[:MAX_ATTN_NOTES]:
        tok = repr(_tok(vocab, int(context[p]))) if context is not None and 0 <= p < len(context) else "?"
        notes.append(f'<div class="ns-attn" title="{esc(f"attn {w:.3g}")}">← attends to <code>{esc(tok)}</code> '
                     f'at pos {p} ({w:.3g})</div>')
    if len(outside) > MAX_ATTN_NOTES:
        notes.append(f'<div class="ns-attn">… and {len(outside) - MAX_ATTN_NOTES} more sources outside the window</div>')
    return "".join(notes)


def example_header(row: dict, label: str) -> str:
    """``#0 · max 2.651 on "bu" · prose, ctx 23, pos 24``: the value and token are escaped."""
    value = float(row["activation"]) if "activation" in row else float(row["value"])
    return (f'<div class="ns-head">{esc(label)} · max <b class="ns-val">{value:.4g}</b> on '
            f'<code>{esc(repr(str(row["token_str"])))}</code> · {esc(row["corpus"])}, ctx {int(row["ctx_id"])}, '
            f'pos {int(row["pos"])}</div>')


def example_window(row: dict, vocab: Sequence[str], vmax: float, vmin: float, attention: Attention | None = None,
                   context: Sequence[int] | None = None, salience: Mapping[int, float] | None = None) -> str:
    """The coloured window, its sources (or salient tokens) underlined, and the notes naming
    the sources outside it (their tokens read from ``context``, the example's whole stored context)."""
    return (example_html(row, vocab, vmax, vmin, attention=attention, salience=salience)
            + attention_notes(row, attention, vocab, context))


def example_block(row: dict, vocab: Sequence[str], vmax: float, vmin: float, context: Sequence[int] | None,
                  attention: Attention | None = None, salience: Mapping[int, float] | None = None) -> str:
    """Header, coloured window (where the example's token attends, for a head; the tokens its
    activation depends on, for a neuron with ``token_saliency``) and, when the stored context
    is longer, the whole context in a native ``<details>`` (expands in the browser, no server
    round trip)."""
    out = example_header(row, f"#{int(row['rank'])}") + example_window(row, vocab, vmax, vmin, attention, context, salience)
    if context is not None and len(context) > len(row["window_token_ids"]):
        out += (f'<details class="ns-ctx"><summary>whole context {int(row["ctx_id"])} ({len(context)} tokens)</summary>'
                f'{example_html(row, vocab, vmax, vmin, context=context, attention=attention, salience=salience)}</details>')
    return out


def _tok(vocab: Sequence[str], token_id: int) -> str:
    return vocab[token_id] if 0 <= token_id < len(vocab) else f"<{token_id}>"


def neuron_query(site: str, layer: int, neuron: int) -> str:
    return "?" + urlencode({"site": site, "layer": int(layer), "neuron": int(neuron)})


def head_query(layer: int, head: int, metric: str) -> str:
    return "?" + urlencode({"layer": int(layer), "head": int(head), "metric": metric})


def bins(stats: dict, quantiles: Sequence[float] | None) -> list[dict]:
    """The quantile bins of one feature: index, quantile range, value edges, count, share."""
    edges = [float(e) for e in stats["quantile_edges"]]
    counts = [int(c) for c in stats["bin_counts"]]
    total = max(int(stats["n_tokens"]), 1)
    qs = list(quantiles or [])
    out = []
    for i, count in enumerate(counts):
        lo = edges[i - 1] if i > 0 else float(stats["min"])
        hi = edges[i] if i < len(edges) else float(stats["max"])
        q_lo = qs[i - 1] if 0 < i <= len(qs) else (0.0 if i == 0 else None)
        q_hi = qs[i] if i < len(qs) else 1.0
        out.append({"bin": i, "quantiles": f"{q_lo:g}–{q_hi:g}" if q_lo is not None else "", "low": lo,
                    "high": hi, "tokens": count, "share": count / total})
    return out
