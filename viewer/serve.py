"""Run ``neuroscope view`` in the background and wait until it answers (screenshots, browser
and load tests). The server's output goes to a file: a pipe nobody reads fills up and stalls it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_viewer(index_dir: Path | str | list[Path | str], port: int, timeout_s: float = 90) -> subprocess.Popen:
    """`neuroscope view` in a subprocess on 127.0.0.1 (one index, or several); returns once its
    health check answers."""
    log = tempfile.NamedTemporaryFile("w+", prefix="neuroscope-view-", suffix=".log", delete=False)
    dirs = [str(d) for d in (index_dir if isinstance(index_dir, list) else [index_dir])]
    proc = subprocess.Popen([sys.executable, "-m", "indexer.cli", "view", *dirs, "--port", str(port)],
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
