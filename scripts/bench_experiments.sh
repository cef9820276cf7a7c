#!/usr/bin/env bash
# Issue 5 benchmarks (docs/benchmarks.md, section 4): the reports' architecture comparison on
# covid-challenge (4 classes), a 9-trial lr x dropout sweep, and `cxr bench` fp32 vs bf16.
# Run from the repository root with the venv active; everything lands in $OUT (default runs/bench5).
# Small on purpose (128 px, few epochs): the numbers in the docs were measured on a shared 2-core CPU.
set -euo pipefail
OUT=${OUT:-runs/bench5}
DATA=${DATA:-../shared/data/covid-challenge}
export TORCH_HOME=${TORCH_HOME:-../shared/weights/torch}
COMMON=(--data "$DATA" --image-size 128 --quiet --overwrite)
mkdir -p "$OUT"

# 1. Architecture comparison (same data, same splits, same seed).
SECONDS=0
cxr train "${COMMON[@]}" --model mobilenet_v2 --pretrained --freeze backbone --epochs 30 \
  --out "$OUT/mobilenet_v2-frozen"
cxr train "${COMMON[@]}" --model mobilenet_v2 --pretrained --freeze none --lr 1e-4 --epochs 6 \
  --out "$OUT/mobilenet_v2-finetuned"
cxr train "${COMMON[@]}" --model resnet18 --random-init --epochs 6 --out "$OUT/resnet18"
cxr train "${COMMON[@]}" --model densenet121 --random-init --epochs 6 --out "$OUT/densenet121"
cxr train "${COMMON[@]}" --model small_cnn --epochs 6 --out "$OUT/small_cnn"
RUNS=("$OUT"/mobilenet_v2-frozen "$OUT"/mobilenet_v2-finetuned "$OUT"/resnet18 "$OUT"/densenet121 "$OUT"/small_cnn)
cxr compare "${RUNS[@]}" --out "$OUT/compare"
cxr report "${RUNS[@]}" --out "$OUT/report"
echo "comparison wall time: ${SECONDS} s"

# 2. The reports' lr x dropout sweep (3 x 3 grid) on the frozen-MobileNetV2 fast path.
rm -rf "$OUT/sweep"
SECONDS=0
cxr sweep --config "$OUT/mobilenet_v2-frozen/config.yaml" --param lr=1e-2,1e-3,1e-4 \
  --param dropout=0.2,0.5,0.8 --set train.epochs=15 --set eval.tsne=false --out "$OUT/sweep"
echo "sweep wall time: ${SECONDS} s"

# 3. Throughput: fp32 vs bf16 autocast on this CPU (a GPU, when present, is measured too).
cxr bench --models mobilenet_v2,resnet18,densenet121,small_cnn --devices cpu,cuda --precision fp32,bf16 \
  --image-size 128 --batch-size 32 --steps 5 --out "$OUT/bench"
