#!/usr/bin/env bash
# Spine benchmarks (issue 2), run from the repo root: bash scripts/bench_spine.sh
# Cold = empty image/feature cache; warm = the same command again. Wall time includes Python start-up.
set -euo pipefail
export TORCH_HOME=${TORCH_HOME:-$PWD/../shared/weights/torch}
D=${DATA:-../shared/data}
OUT=${OUT:-/tmp/cxrlab-bench}
mkdir -p "$OUT"
CXR=.venv/bin/cxr
wall() {  # name, then cxr arguments
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$CXR" "$@" --out "$OUT/$name" --overwrite -q > "$OUT/$name.log" 2>&1 || { cat "$OUT/$name.log"; exit 1; }
  printf '%s\t%.1f\n' "$name" "$(echo "$(date +%s.%N) - $t0" | bc)" | tee -a "$OUT/walls.tsv"
}
rm -f "$OUT/walls.tsv"
FROZEN=(--model mobilenet_v2 --pretrained --freeze backbone)
for task in covid4 covid2 kermany; do
  cache=$(mktemp -d)
  case $task in
    covid4) args=(--data "$D/covid-challenge") ;;
    covid2) args=(--data "$D/covid-challenge" --classes covid,normal) ;;
    kermany) args=(--data "$D/kermany-224") ;;
  esac
  wall "$task-cold" train "${args[@]}" "${FROZEN[@]}" --cache-dir "$cache"
  wall "$task-warm" train "${args[@]}" "${FROZEN[@]}" --cache-dir "$cache"
  rm -rf "$cache"
done
wall pneumoniamnist-small_cnn train --data "$D/pneumoniamnist/pneumoniamnist.npz" --model small_cnn \
  --image-size 28 --epochs 30 --batch-size 128 --lr 2e-3 --early-stopping 6
t0=$(date +%s.%N); .venv/bin/cxr demo --out "$OUT/demo" -q > "$OUT/demo.log" 2>&1
printf 'demo\t%.1f\n' "$(echo "$(date +%s.%N) - $t0" | bc)" | tee -a "$OUT/walls.tsv"
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
walls = dict(line.split("\t") for line in (out / "walls.tsv").read_text().splitlines())
print("| run | test n | accuracy [95% CI] | balanced acc. | AUC [95% CI] | wall s | in-run s | decode s | features s | train s |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, wall in walls.items():
    m = json.loads((out / name / "metrics.json").read_text())
    t, tm = m["test"], m["timing"]
    ci = lambda v: f"[{v[0]:.3f}, {v[1]:.3f}]"
    print(f"| {name} | {t['n']} | {t['accuracy']:.3f} {ci(t['accuracy_ci95'])} | {t['balanced_accuracy']:.3f} | "
          f"{t['auc']:.3f} {ci(t['auc_ci95'])} | {float(wall):.1f} | {tm['total_s']:.1f} | {tm['decode_s']:.1f} | "
          f"{tm['features_s']:.1f} | {tm['train_s']:.1f} |")
PY
.venv/bin/python scripts/feature_throughput.py --model mobilenet_v2 --size 224 --n 256
