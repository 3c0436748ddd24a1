"""``neuroscope view DIR``: run the Streamlit app on an index, headless, on 127.0.0.1 by default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from viewer.state import INDEX_ENV

APP = Path(__file__).resolve().with_name("app.py")


def command(index_dir: Path | str, host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """The ``streamlit run`` command line for an index."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host, "--server.port", str(int(port)), "--server.headless", "true",
        "--server.runOnSave", "false", "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false", "--global.developmentMode", "false",
        "--client.toolbarMode", "minimal", "--theme.base", "light",
        "--", str(index_dir),
    ]


def environment(index_dir: Path | str) -> dict[str, str]:
    """The app finds the index in $NEUROSCOPE_INDEX, and this copy of the code first on the path."""
    root = str(APP.parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, INDEX_ENV: str(Path(index_dir).resolve()), "PYTHONPATH": path}


def launch(index_dir: Path | str, host: str = "127.0.0.1", port: int = 8501) -> int:
    """Serve the viewer until Ctrl+C. On POSIX this process becomes the server (exec), so a
    signal to it stops the server too; elsewhere the server runs as a child."""
    shown = f"[{host}]" if ":" in host else host
    print(f"neuroscope viewer on {index_dir}: http://{shown}:{port}/  (Ctrl+C stops it)", flush=True)
    cmd, env = command(index_dir, host, port), environment(index_dir)
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
