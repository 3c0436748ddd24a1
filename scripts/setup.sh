#!/usr/bin/env bash
# Create .venv/ at the repository root and install neuroscope into it, once.
# Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv/ with $($python --version)" >&2
  "$python" -m venv .venv
fi
stamp=.venv/.neuroscope-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing dependencies into .venv/ (first run takes a few minutes)" >&2
  .venv/bin/pip install --quiet --upgrade pip
  # torch first and pinned: here this takes the local CPU wheel; unpinned, pip would pull
  # a multi-GB CUDA build. On a CUDA machine, install the torch you want before this script.
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet "torch==${NEUROSCOPE_TORCH:-2.13.0}"
  fi
  .venv/bin/pip install --quiet -e ".[test]"
  echo "$want" > "$stamp"
fi
