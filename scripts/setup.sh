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
  .venv/bin/pip install --quiet --upgrade pip "setuptools>=77"
  # torch first and pinned: here this takes the local CPU wheel; unpinned, pip would pull
  # a multi-GB CUDA build. On a CUDA machine, install the torch you want before this script.
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet "torch==${NEUROSCOPE_TORCH:-2.13.0}"
  fi
  .venv/bin/pip install --quiet -e ".[test]"
  echo "$want" > "$stamp"
fi
# The browser tests drive Debian's chromium through Playwright (no browser download).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing chromium for the browser tests" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; fi
  fi
  if [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; then
    { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >&2 \
      || echo "setup: could not install chromium; the browser tests will fail (apt-get install chromium)" >&2
  else
    echo "setup: /usr/bin/chromium is missing and this user cannot apt-get install it; the browser tests need it" >&2
  fi
fi
