#!/usr/bin/env bash
# The pip wheel, checked as a user gets it (issue 30, item 3):
#   1. `python -m build` makes the wheel and the sdist; the wheel holds the package data (the bundled
#      PneumoniaMNIST demo asset, the page templates and their CSS, the recipes, the lung segmenter);
#   2. the wheel alone (the base install: no extras) goes into a clean virtual environment under /tmp, with
#      torch from this machine's disk the way scripts/bootstrap.sh installs it;
#   3. `cxr demo` runs from that environment in a folder outside the repository (so the installed package,
#      not the source tree, is used) and writes its report;
#   4. commands that need an extra (`cxr serve`, `cxr export --format onnx`, `cxr sweep`) say in one line
#      which extra to install, with no traceback.
# Prints the wheel's size, the install's time and the environment's size (docs/benchmarks.md).
# Usage: scripts/check_wheel.sh  (from .ci/run after `make test`; needs .venv from scripts/bootstrap.sh)
#   CXRLAB_WHEEL_DEMO_EPOCHS=1 shortens the demo (CI runs the demo as shipped).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${CXRLAB_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
work=$(mktemp -d "${TMPDIR:-/tmp}/cxrlab-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
quiet_pip() { "$@" 2>&1 | { grep -v "is ignored" || true; }; }
fail() { echo "check_wheel: $*" >&2; exit 1; }

# 1. build (an isolated build environment, as pip and CI services do)
[ -x .venv/bin/python ] || fail ".venv is missing: run scripts/bootstrap.sh (make test) first"
.venv/bin/python -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 \
  || { tail -20 "$work/build.log" >&2; fail "python -m build failed"; }
wheel=$(ls "$work"/dist/cxrlab-*.whl)
sdist=$(ls "$work"/dist/cxrlab-*.tar.gz)
.venv/bin/python - "$wheel" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["cxrlab/assets/pneumoniamnist.npz", "cxrlab/pages/templates/run_report.html",
        "cxrlab/pages/templates/base.html", "cxrlab/pages/templates/style.css",
        "cxrlab/deploy/templates/serve.html", "cxrlab/recipes/fast_pneumoniamnist.yaml",
        "cxrlab/reproduce/reports.yaml", "cxrlab/explain/assets/lungs.safetensors",
        "cxrlab/explain/assets/lungs.json", "cxrlab/py.typed", "cxrlab/reports/templates/model_card.md"]
missing = [n for n in need if n not in names]
if missing:
    sys.exit(f"check_wheel: the wheel lacks {', '.join(missing)} (pyproject.toml [tool.setuptools.package-data])")
if any(n.startswith(("tests/", "docs/")) for n in names):
    sys.exit("check_wheel: the wheel holds tests/ or docs/")
EOF
echo "check_wheel: built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB) and $(basename "$sdist") ($(du -k "$sdist" | cut -f1) KiB)" >&2

# 2. the base install into a clean environment
"$PYTHON" -m venv "$work/venv"
py=$work/venv/bin/python
quiet_pip "$py" -m pip install -q --disable-pip-version-check --upgrade pip
t0=$(date +%s)
# shellcheck disable=SC2086
quiet_pip "$py" -m pip install -q --disable-pip-version-check $TORCH_SPEC
t1=$(date +%s)
quiet_pip "$py" -m pip install -q --disable-pip-version-check "$wheel"
t2=$(date +%s)
echo "check_wheel: base install in $((t2 - t0)) s (torch and torchvision $((t1 - t0)) s, the wheel with its" \
  "other dependencies $((t2 - t1)) s); the environment takes $(du -sm "$work/venv" | cut -f1) MiB" >&2
"$py" - <<'EOF'
import importlib.util, sys
extras = ["fastapi", "uvicorn", "onnx", "onnxruntime", "onnxscript", "optuna", "pydicom", "gdcm",
          "pylibjpeg", "pytorch_grad_cam", "timm", "torchxrayvision", "psycopg2"]
present = [m for m in extras if importlib.util.find_spec(m) is not None]
if present:
    sys.exit(f"check_wheel: the base install pulled in optional packages: {', '.join(present)}")
EOF

# 3. `cxr demo` from the installed package, outside the repository
mkdir -p "$work/user"
cd "$work/user"
where=$(env -u PYTHONPATH "$py" -c "import cxrlab; print(cxrlab.__file__)")
case "$where" in
  "$work/venv/"*) ;;
  *) fail "cxrlab was imported from $where, not from the installed wheel" ;;
esac
t3=$(date +%s)
# shellcheck disable=SC2086
env -u PYTHONPATH "$work/venv/bin/cxr" demo --out demo -q ${CXRLAB_WHEEL_DEMO_EPOCHS:+--epochs $CXRLAB_WHEEL_DEMO_EPOCHS} \
  >"$work/demo.log" 2>&1 \
  || { tail -20 "$work/demo.log" >&2; fail "cxr demo failed on the base install"; }
[ -f demo/report.html ] && [ -f demo/metrics.json ] || fail "cxr demo wrote no report.html / metrics.json"
grep -q "cxrlab\[explain\]" demo/report.html \
  || fail "the demo report does not say that the Grad-CAM gallery needs cxrlab[explain]"
echo "check_wheel: cxr demo on the base install passed in $(($(date +%s) - t3)) s ($(tail -1 "$work/demo.log"))" >&2

# 4. a command whose extra is missing: one line naming the extra, exit status 2, no traceback
expect_extra() {  # EXTRA ARGS...
  local extra=$1 out rc=0
  shift
  out=$(env -u PYTHONPATH "$work/venv/bin/cxr" "$@" 2>&1 >/dev/null) || rc=$?
  [ "$rc" = 2 ] || fail "cxr $* exited $rc (want 2): $out"
  [ "$(printf '%s\n' "$out" | wc -l)" = 1 ] || fail "cxr $* printed more than one line: $out"
  case "$out" in
    *"pip install 'cxrlab[$extra]'") echo "check_wheel: cxr $1: $out" >&2 ;;
    *) fail "cxr $* did not name cxrlab[$extra]: $out" ;;
  esac
}
expect_extra serve serve demo
expect_extra export export demo --format onnx --out model.onnx
expect_extra sweep sweep --config "$repo/src/cxrlab/recipes/fast_pneumoniamnist.yaml" --param lr=1e-3,1e-4 --out sw
echo "check_wheel: passed" >&2
