#!/usr/bin/env bash
# Build the API reference (Sphinx autodoc/autosummary over the package's docstrings) with warnings as
# errors, into build/api-html (index.html). Sources are copied to build/api-src first, so the pages
# autosummary generates never land in the repository. SPHINXBUILD names another sphinx-build (tox).
set -euo pipefail
cd "$(dirname "$0")/.."
SPHINXBUILD="${SPHINXBUILD:-.venv/bin/sphinx-build}"
[ -x "$SPHINXBUILD" ] || bash scripts/setup.sh
rm -rf build/api-src build/api-html
mkdir -p build
cp -r docs/api build/api-src
"$SPHINXBUILD" -q -W --keep-going -b html build/api-src build/api-html
echo "API reference: build/api-html/index.html"
