"""The viewer tests' index (toy-1l over code, prose and a hostile corpus) and a live server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from helpers.paths import ROOT
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
        ctx_len=64, batch_size=8, top_k=5, per_bin=2, quantiles=(0.5, 0.9, 0.99), warmup_tokens=900,
        window_before=32, window_after=8,
    )
    return index(cfg, progress=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_viewer(index_dir: Path, port: int, timeout_s: float = 90) -> subprocess.Popen:
    """`neuroscope view` in a subprocess on 127.0.0.1; returns once its health check answers."""
    # Output goes to a file: a pipe nobody reads would fill up and stall the server.
    log = tempfile.NamedTemporaryFile("w+", prefix="neuroscope-view-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "indexer.cli", "view", str(index_dir), "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log_path = log.name  # type: ignore[attr-defined]
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"neuroscope view exited {proc.returncode}: {Path(log.name).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"neuroscope view did not answer within {timeout_s} s")


def stop(proc: subprocess.Popen) -> str:
    """Stop the server; returns what it printed."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    path = Path(proc.log_path)  # type: ignore[attr-defined]
    out = path.read_text()
    path.unlink(missing_ok=True)
    return out
