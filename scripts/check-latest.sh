#!/usr/bin/env bash
# Install the newest versions pyproject.toml allows (no constraints.txt) into a separate
# environment, .venv-latest, and run the README's test command there: what CI would see on a
# fresh machine the day a dependency releases. Extra pytest arguments pass through, e.g.
#   bash scripts/check-latest.sh -x tests/test_structure.py
set -euo pipefail
cd "$(dirname "$0")/.."
EVO_VENV=.venv-latest EVO_UNPINNED=1 bash scripts/setup.sh
.venv-latest/bin/python -m pip --disable-pip-version-check list 2>/dev/null \
  | grep -i -E "^(torch|transformers|accelerate|optuna|deap|gguf|safetensors|scikit-learn|numpy|zstandard|constriction) " || true
.venv-latest/bin/python -m pytest -q "$@"
