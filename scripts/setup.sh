#!/usr/bin/env bash
# Idempotent setup: apt packages for a virtual X screen + Qt, a .venv with pinned CPU torch and PyQt6.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v xvfb-run >/dev/null 2>&1 || ! dpkg -s libxcb-icccm4 >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 \
    libxcb-render-util0 libxkbcommon-x11-0 libxcb-cursor0 libxcb-shape0 libegl1 libdbus-1-3 libfontconfig1 >/dev/null
fi
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
# reinstall when pyproject.toml (the dependency list) changed since the last install
STAMP=".venv/.histoexpr-installed"
WANT="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] || \
   ! .venv/bin/python -c "import napari_histoexpr, napari, torch, pytestqt" >/dev/null 2>&1 || \
   [ ! -x .venv/bin/ruff ]; then
  .venv/bin/pip install -q --upgrade pip
  # one pip command, so the resolver sees every pin at once (pandas < 3 for anndata; the CPU torch wheel)
  .venv/bin/pip install -q torch==2.13.0 "napari[pyqt6]==0.9.2" "pandas<3" -e ".[testing]"
  echo "$WANT" > "$STAMP"
fi
