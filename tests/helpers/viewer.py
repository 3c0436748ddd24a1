"""The viewer tests' index (toy-1l over code, prose and a hostile corpus) and a live server."""

from __future__ import annotations

import html as html_lib
import json
import re
from pathlib import Path

from indexer.config import IndexConfig

# Text a corpus may hold that must show as text, never act: HTML, script, Markdown link, LaTeX.
HOSTILE = ("<script>alert('x')</script> <img src=x onerror=alert(1)> [click](javascript:alert(2)) "
           "**bold** $x^2$ <b>not bold</b>\n")


def write_hostile_corpus(path: Path) -> Path:
    docs = [{"text": HOSTILE * 6 + f"document {i} ends here.\n"} for i in range(12)]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def build_viewer_index(folder: Path) -> Path:
    """A real index from the embedded toy model: small budget, three corpora, heads included."""
    from indexer.run.engine import index

    corpus = write_hostile_corpus(folder / "hostile.jsonl")
    cfg = IndexConfig(
        model="toy-1l", corpus=["code", "prose", f"hostile={corpus}"], out=str(folder / "idx"), tokens=3000,
        ctx_len=64, batch_size=8, top_k=5, per_bin=2, quantiles=(0.5, 0.9, 0.99),
        window_before=32, window_after=8,
    )
    return index(cfg, progress=False)


def open_page(monkeypatch, index_dir: Path, **params):
    """The viewer run once by AppTest on ``index_dir`` with these query parameters; fails on
    any exception or error message."""
    from streamlit.testing.v1 import AppTest

    from helpers.paths import ROOT

    monkeypatch.setenv("NEUROSCOPE_INDEX", str(index_dir))
    at = AppTest.from_file(str(ROOT / "viewer" / "app.py"), default_timeout=120)
    for key, value in params.items():
        at.query_params[key] = str(value)
    at.run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    return at


# --- reading what an AppTest run shows -----------------------------------------------------


def run_app(monkeypatch, index_dir, **params):
    """The viewer run once by AppTest on ``index_dir`` with these query parameters; fails on an
    exception (error messages are the caller's to check)."""
    from streamlit.testing.v1 import AppTest

    from helpers.paths import ROOT

    monkeypatch.setenv("NEUROSCOPE_INDEX", str(index_dir))
    at = AppTest.from_file(str(ROOT / "viewer" / "app.py"), default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = str(v)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def html(at) -> str:
    return "\n".join(h.proto.body for h in at.get("html"))


def shown(body: str) -> str:
    """The text a browser shows for some HTML: tags dropped, entities decoded, marks removed."""
    return html_lib.unescape(re.sub(r"<[^>]+>", "", body)).replace("\u21b5", "")


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def title(at) -> str:
    return at.title[0].value if at.title else ""
