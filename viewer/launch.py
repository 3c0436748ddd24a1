"""``neuroscope view DIR [DIR ...]``: run the Streamlit app on one or more indexes, headless, on
127.0.0.1 by default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from viewer.indexes import INDEX_ENV, expand, to_env

APP = Path(__file__).resolve().with_name("app.py")


def command(index_dirs: list[Path | str], host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """The ``streamlit run`` command line (the indexes themselves travel in $NEUROSCOPE_INDEX)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host, "--server.port", str(int(port)), "--server.headless", "true",
        "--server.runOnSave", "false", "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false", "--global.developmentMode", "false",
        "--client.toolbarMode", "minimal", "--theme.base", "light",
        "--", *map(str, index_dirs),
    ]


def environment(index_dirs: list[Path | str]) -> dict[str, str]:
    """The app finds the indexes in $NEUROSCOPE_INDEX, and this copy of the code first on the path."""
    root = str(APP.parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, INDEX_ENV: to_env(expand(index_dirs)), "PYTHONPATH": path}


def launch(index_dirs: list[Path | str], host: str = "127.0.0.1", port: int = 8501) -> int:
    """Serve the viewer until Ctrl+C. On POSIX this process becomes the server (exec), so a
    signal to it stops the server too; elsewhere the server runs as a child."""
    shown = f"[{host}]" if ":" in host else host
    what = ", ".join(map(str, expand(index_dirs)))
    print(f"neuroscope viewer on {what}: http://{shown}:{port}/  (Ctrl+C stops it)", flush=True)
    cmd, env = command(index_dirs, host, port), environment(index_dirs)
    if os.name == "posix":
        sys.stderr.flush()
        os.execve(sys.executable, cmd, env)  # does not return
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0
