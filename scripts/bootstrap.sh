#!/usr/bin/env bash
# Create or refresh the virtual environment in .venv/ (idempotent; reinstalls only when
# pyproject.toml or this script changed). Works offline except for the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${CXRLAB_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.cxrlab-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "installing cxrlab and its dependencies into .venv (first time: a few minutes)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | { grep -v "is ignored" || true; }
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q --disable-pip-version-check $TORCH_SPEC 2>&1 | { grep -v "is ignored" || true; }
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | { grep -v "is ignored" || true; }
  .venv/bin/python -c "import cxrlab, torch, torchvision, lightning" || { echo "install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
