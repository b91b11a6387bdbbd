#!/usr/bin/env bash
# Set up (idempotent) and run the demo: a generated slide + Visium spots shown in napari.
# Without a display it runs under Xvfb and writes demo-output/demo.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -n "${DISPLAY:-}" ]; then exec .venv/bin/histoexpr demo "$@"; fi
exec xvfb-run -a .venv/bin/histoexpr demo --screenshot demo-output/demo.png "$@"
