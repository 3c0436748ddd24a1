"""Server time of the neuron page over random neurons: median and p95 as JSON.

    .venv/bin/python scripts/time_viewer.py INDEX_DIR [--neurons 50] [--seed 0]

Two figures per neuron, each on a neuron not seen before (so no cache helps):
- `data_render_ms`: the page's reads (`viewer.data.neuron_page`) plus building every example's
  HTML (`viewer.render`), as the app does, on a warm connection;
- `script_ms`: the server time of the page: the app script's own run for the deep link (every
  query, chart and element), as `viewer/app.py` records it, run by AppTest as the server would;
- `apptest_ms`: the same run seen from AppTest (adds its own parsing of the element tree).
Run it on an otherwise idle machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("index_dir")
    ap.add_argument("--neurons", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import numpy as np
    from streamlit.testing.v1 import AppTest

    from indexer.api import Index
    from viewer import data
    from viewer.render import example_header, example_html

    ix = Index.open(args.index_dir)
    vocab = data.vocab(ix)
    counts = data.feature_counts(ix)
    keys = [(r.site, int(r.layer), n) for r in counts.itertuples() for n in range(int(r.first), int(r.last) + 1)]
    rng = np.random.default_rng(args.seed)
    picks = [keys[i] for i in rng.choice(len(keys), size=min(2 * args.neurons, len(keys)), replace=False)]
    data.neuron_page(ix, *picks[-1])  # warm the connection and the file footers once
    render_ms = []
    for site, layer, neuron in picks[: args.neurons]:
        t = time.perf_counter()
        page = data.neuron_page(ix, site, layer, neuron)
        vmax, vmin = float(page.record.stats["max"]), float(page.record.stats["min"])
        for frame in (page.record.top, page.record.quantiles):
            for row in frame.to_dict("records"):
                example_header(row, "#")
                example_html(row, vocab, vmax, vmin)
                if int(row["ctx_id"]) in page.contexts:
                    example_html(row, vocab, vmax, vmin, context=page.contexts[int(row["ctx_id"])])
        render_ms.append((time.perf_counter() - t) * 1000)
    os.environ["NEUROSCOPE_INDEX"] = str(Path(args.index_dir).resolve())
    app = str(ROOT / "viewer" / "app.py")
    warm = AppTest.from_file(app, default_timeout=120)
    warm.run()  # imports, the shared connection and the vocab, as a running server has them
    apptest_ms, script_ms = [], []
    for site, layer, neuron in picks[args.neurons: 2 * args.neurons] or picks[: args.neurons]:
        at = AppTest.from_file(app, default_timeout=120)
        for k, v in {"site": site, "layer": layer, "neuron": neuron}.items():
            at.query_params[k] = str(v)
        t = time.perf_counter()
        at.run()
        apptest_ms.append((time.perf_counter() - t) * 1000)
        script_ms.append(at.session_state["_ns_run_ms"])
        assert not at.exception and not at.error, (site, layer, neuron, at.error)
    out = {"index": str(args.index_dir), "neurons": len(render_ms)}
    for name, values in (("data_render_ms", render_ms), ("script_ms", script_ms), ("apptest_ms", apptest_ms)):
        out[name] = {"median": round(statistics.median(values), 1), "p95": round(pct(values, 0.95), 1)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
