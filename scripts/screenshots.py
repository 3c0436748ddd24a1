"""Screenshots of the viewer for the README: the overview, a neuron page and a head page, and
with --compare the compare page.

    .venv/bin/python scripts/screenshots.py INDEX_DIR [--out docs] [--neuron mlp_post:0:N] [--head 0:H:METRIC]
        [--compare IX:SITE:LAYER:N,IX:SITE:LAYER:N]

Starts `neuroscope view INDEX_DIR` on a free port of 127.0.0.1, drives Debian's chromium
(/usr/bin/chromium) with Playwright, and writes docs/viewer-overview.png, viewer-neuron.png and
viewer-head.png. Without --neuron it picks the neuron with the largest max activation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from viewer.serve import free_port, start_viewer, stop  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def wait_rendered(page, timeout_ms: int = 60_000) -> None:
    """Wait until the script has finished (no 'running' status widget) and the page is still."""
    page.wait_for_selector("h1", timeout=timeout_ms)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)
    page.wait_for_timeout(4000)  # charts draw after the script finishes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("index_dir")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--neuron", help="SITE:LAYER:NEURON")
    ap.add_argument("--head", help="LAYER:HEAD:METRIC")
    ap.add_argument("--compare", help="comma list of IX:SITE:LAYER:N: also shoot docs/viewer-compare.png")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from indexer.api import Index

    with Index.open(args.index_dir) as ix:
        neuron_page = None
        if args.neuron:
            site, layer, neuron = args.neuron.split(":")
            neuron_page = f"?site={site}&layer={layer}&neuron={neuron}"
        else:
            best = ix.sql("SELECT site, layer, neuron FROM neurons ORDER BY max DESC LIMIT 1")
            if len(best):  # a heads-only index (an attention-only model) has no neuron page
                neuron_page = f"?site={best['site'].iloc[0]}&layer={int(best['layer'].iloc[0])}&neuron={int(best['neuron'].iloc[0])}"
        if args.head:
            hl, hh, metric = args.head.split(":")
        else:
            best = ix.sql("SELECT layer, head FROM head_scores ORDER BY prev_token DESC LIMIT 1")
            hl, hh = (int(best["layer"].iloc[0]), int(best["head"].iloc[0])) if len(best) else (0, 0)
            metric = "max_attn"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start_viewer(args.index_dir, port)
    base = f"http://127.0.0.1:{port}/"
    shots = {
        "viewer-overview.png": base,
        **({"viewer-neuron.png": base + neuron_page} if neuron_page else {}),
        "viewer-head.png": f"{base}?layer={hl}&head={hh}&metric={metric}",
    }
    if args.compare:
        from urllib.parse import urlencode

        shots["viewer-compare.png"] = base + "?" + urlencode([("page", "compare")] + [("f", f) for f in args.compare.split(",")])
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1500}, device_scale_factor=1)
            for name, url in shots.items():
                page.goto(url)
                wait_rendered(page)
                page.screenshot(path=str(out / name), full_page=False)
                print(f"{out / name}  <- {url}")
            browser.close()
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
