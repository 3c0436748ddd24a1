"""``neuroscope export-html DIR OUT``: a static site, one page per neuron and per head.

Reads each table once (not once per feature), renders the token colouring with the same
``viewer.render`` code as the app, and fills Jinja2 templates with autoescaping on; example
HTML is marked safe only after ``render`` has escaped every token string in it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader
from markupsafe import Markup
from tqdm import tqdm

from indexer.api import Index
from indexer.errors import IndexDirError
from viewer import data
from viewer.render import CSS, METRIC_NOTES, bins, example_header, example_window

MARKER = ".neuroscope-export"


def export_html(index_dir: Path | str, out: Path | str, progress: bool = True) -> Path:
    """Write the site into ``out`` (new, empty, or an earlier export); returns ``out``."""
    out = Path(out)
    _prepare(out, Path(index_dir))
    env = Environment(loader=PackageLoader("viewer", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    with Index.open(index_dir) as ix:
        vocab = data.vocab(ix)
        neurons = data.sql(ix, "SELECT * FROM neurons ORDER BY site, layer, neuron")
        examples = data.sql(ix, "SELECT * FROM examples ORDER BY site, layer, neuron, bin, rank")
        heads = data.sql(ix, "SELECT * FROM heads ORDER BY layer, head, metric")
        head_examples = data.sql(ix, "SELECT * FROM head_examples ORDER BY layer, head, metric, bin, rank")
        head_scores = ix.head_scores()
        attention = _attention(ix)
        # Contexts of the head examples that attend outside their window (to name the source token).
        head_contexts = data.contexts(ix, sorted({int(c) for c in head_examples["ctx_id"]})) if attention else {}
        manifest = ix.manifest
    (out / "style.css").write_text(CSS + _PAGE_CSS)
    quantiles = manifest.get("quantiles")
    neuron_groups = _groups(examples, ["site", "layer", "neuron"])
    head_groups = _groups(head_examples, ["layer", "head", "metric"])
    keys = list(zip(neurons["site"], neurons["layer"].astype(int), neurons["neuron"].astype(int)))
    template = env.get_template("feature.html.j2")
    bar = tqdm(total=len(neurons) + head_scores.shape[0], desc="export-html", unit="page", disable=not progress,
               file=sys.stderr)
    (out / "n").mkdir(exist_ok=True)
    for i, stats in enumerate(neurons.to_dict("records")):
        key = keys[i]
        section = _section(stats, neuron_groups.get(key, []), vocab, quantiles)
        page = template.render(
            title=f"Neuron {key[2]} · layer {key[1]} · {key[0]}", root="../", sections=[section],
            prev=neuron_file(*keys[i - 1]) if i > 0 else None,
            next=neuron_file(*keys[i + 1]) if i + 1 < len(keys) else None,
            scores=None,
        )
        (out / "n" / neuron_file(*key)).write_text(page)
        bar.update()
    (out / "h").mkdir(exist_ok=True)
    head_keys = sorted({(int(l), int(h)) for l, h in zip(heads["layer"], heads["head"])})
    score_cols = [c for c in head_scores.columns if c not in ("layer", "head")]
    by_head = {k: g for k, g in heads.groupby(["layer", "head"])} if len(heads) else {}
    for i, (layer, head) in enumerate(head_keys):
        rows = by_head[(layer, head)].to_dict("records")
        sections = [_section(st, head_groups.get((layer, head, st["metric"]), []), vocab, quantiles,
                             name=f"{st['metric']}: {(manifest.get('head_metrics') or {}).get(st['metric'], '')}",
                             note=METRIC_NOTES.get(st["metric"], ""),
                             attention={k[3:]: v for k, v in attention.items() if k[:3] == (layer, head, st["metric"])},
                             contexts=head_contexts)
                    for st in rows]
        srow = head_scores[(head_scores["layer"] == layer) & (head_scores["head"] == head)]
        scores = {c: float(srow[c].iloc[0]) for c in score_cols} if len(srow) else None
        page = template.render(
            title=f"Head {layer}.{head}", root="../", sections=sections, scores=scores,
            prev=head_file(*head_keys[i - 1]) if i > 0 else None,
            next=head_file(*head_keys[i + 1]) if i + 1 < len(head_keys) else None,
        )
        (out / "h" / head_file(layer, head)).write_text(page)
        bar.update()
    bar.close()
    _index_page(env, out, manifest, neurons, head_keys, head_scores, score_cols)
    return out


def neuron_file(site: str, layer: int, neuron: int) -> str:
    return f"{site}-L{int(layer)}-N{int(neuron)}.html"


def head_file(layer: int, head: int) -> str:
    return f"L{int(layer)}-H{int(head)}.html"


def _prepare(out: Path, index_dir: Path) -> None:
    if out.resolve() == index_dir.resolve() or index_dir.resolve() in out.resolve().parents:
        raise IndexDirError(f"{out}: the export must go outside the index folder")
    if out.exists():
        if not out.is_dir():
            raise IndexDirError(f"{out} exists and is not a folder")
        if any(out.iterdir()):
            if not (out / MARKER).is_file():
                raise IndexDirError(f"{out} is not empty and holds no earlier export: choose a new folder")
            for sub in ("n", "h"):  # only what an export writes
                shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by neuroscope export-html\n")


def _groups(examples: pd.DataFrame, key: list[str]) -> dict[tuple, list[dict]]:
    if examples.empty:
        return {}
    records = examples.to_dict("records")
    out: dict[tuple, list[dict]] = {}
    for row in records:
        k = tuple(int(row[c]) if c in ("layer", "neuron", "head") else row[c] for c in key)
        out.setdefault(k, []).append(row)
    return out


def _attention(ix: Index) -> dict[tuple, tuple[list[int], list[float]]]:
    """(layer, head, metric, kind, bin, rank) -> (source positions, weights); empty without head_attention."""
    if data.view_columns(ix, data.ATTENTION) is None:
        return {}
    df = data.sql(ix, "SELECT layer, head, metric, kind, bin, rank, src_pos, weights FROM head_attention")
    return {(int(l), int(h), str(m), str(k), int(b), int(r)): ([int(p) for p in src], [float(w) for w in ws])
            for l, h, m, k, b, r, src, ws in zip(df["layer"], df["head"], df["metric"], df["kind"], df["bin"],
                                                 df["rank"], df["src_pos"], df["weights"])}


def _section(stats: dict, rows: list[dict], vocab: list[str], quantiles, name: str = "", note: str = "",
             attention: dict | None = None, contexts: dict | None = None) -> dict:
    vmax, vmin = float(stats["max"]), float(stats["min"])
    attention, contexts = attention or {}, contexts or {}

    def _example(r: dict, label: str) -> Markup:
        # render.example_header/example_window escape every string from the index (render.esc).
        where = attention.get((str(r["kind"]), int(r["bin"]), int(r["rank"])))
        return Markup(example_header(r, label) + example_window(r, vocab, vmax, vmin, where, contexts.get(int(r["ctx_id"]))))

    top = sorted((r for r in rows if r["kind"] == "top"), key=lambda r: r["rank"])
    qrows = [r for r in rows if r["kind"] == "quantile"]
    table = bins(stats, quantiles)
    by_bin = [
        {**b, "examples": [_example(r, f"bin {b['bin']} #{int(r['rank'])}")
                           for r in sorted((r for r in qrows if int(r["bin"]) == b["bin"]), key=lambda r: r["rank"])]}
        for b in reversed(table)
    ]
    corpora: dict[str, int] = {}
    for r in top:
        corpora[r["corpus"]] = corpora.get(r["corpus"], 0) + 1
    return {
        "name": name,
        "note": note,
        "attention": bool(attention),
        "stats": {k: stats[k] for k in ("max", "mean", "std", "min", "frac_active", "n_tokens")},
        "top": [_example(r, f"#{int(r['rank'])}") for r in top],
        "bins": by_bin,
        "corpora": corpora,
        "histogram": Markup(_svg_histogram(stats)),
    }


def _svg_histogram(stats: dict, width: int = 480, height: int = 90) -> str:
    """A small bar chart of the stored histogram (numbers only: nothing to escape)."""
    counts = [int(c) for c in (stats.get("hist") if stats.get("hist") is not None else [])]
    nz = [i for i, c in enumerate(counts) if c]
    if not nz:
        return ""
    counts = counts[nz[0]: nz[-1] + 1]
    import math

    peak = max(math.log1p(c) for c in counts)
    w = width / len(counts)
    bars = "".join(
        f'<rect x="{i * w:.1f}" y="{height - h:.1f}" width="{max(w - 1, 1):.1f}" height="{h:.1f}"><title>{c}</title></rect>'
        for i, c in enumerate(counts) for h in [height * math.log1p(c) / peak]
    )
    return (f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'fill="#ff7f2a">{bars}</svg>')


def _index_page(env: Environment, out: Path, manifest: dict, neurons: pd.DataFrame, head_keys, head_scores,
                score_cols) -> None:
    layers = []
    for (site, layer), df in neurons.groupby(["site", "layer"], sort=False):
        dead = int(data.dead_mask(df).sum())
        rows = [{"file": "n/" + neuron_file(site, layer, n), "neuron": int(n), "max": float(m), "frac_active": float(f)}
                for n, m, f in zip(df["neuron"], df["max"], df["frac_active"])]
        layers.append({"site": site, "layer": int(layer), "n": len(df), "dead": dead, "neurons": rows})
    heads = []
    for layer, head in head_keys:
        srow = head_scores[(head_scores["layer"] == layer) & (head_scores["head"] == head)]
        heads.append({"file": "h/" + head_file(layer, head), "name": f"{layer}.{head}",
                      "scores": [float(srow[c].iloc[0]) if len(srow) else None for c in score_cols]})
    corpora = manifest.get("corpora") or []
    (out / "index.html").write_text(env.get_template("index.html.j2").render(
        model=(manifest.get("model") or {}).get("name", "?"), status=manifest.get("status", "?"),
        tokens=sum(int(c.get("tokens", 0)) for c in corpora), corpora=corpora, layers=layers, heads=heads,
        score_cols=score_cols, root="",
    ))


_PAGE_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;padding:0 16px;color:#222}
table{border-collapse:collapse;font-size:14px}td,th{border-bottom:1px solid #ddd;padding:2px 10px;text-align:left}
nav a{margin-right:14px}.stats span{margin-right:18px}.hist{display:block;margin:8px 0}
.neurons{columns:5;font-size:13px}.neurons a{display:block}.note{color:#555;font-size:14px}
"""
