#!/usr/bin/env bash
# Benchmarks of issue 6 (docs/benchmarks.md, section 5): autoencoder codes vs raw images, and DCGAN
# augmentation vs plain training, on kermany-224 with its official val and test splits.
#
#   bash scripts/bench_generative.sh                 # what section 5 reports (reduced, see below)
#   STRIDE=1 AE_EPOCHS=10 GAN_EPOCHS=100 GAN_MAX=0 GAN_WIDTH=64 RAW_EPOCHS=10 \
#     bash scripts/bench_generative.sh               # full size, for a quiet machine or a GPU
#
# Reduced by default for a contended 2-core CPU: every STRIDE-th training image per class (class ratio
# kept), the official val (16) and test (624) splits in full. STAGES picks parts: "ae gan clf".
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/kermany-224}
OUT=${OUT:-runs/bench6}
STRIDE=${STRIDE:-3}
STAGES=${STAGES:-"ae gan clf"}
AE_EPOCHS=${AE_EPOCHS:-3}
CODE_EPOCHS=${CODE_EPOCHS:-10}
RAW_EPOCHS=${RAW_EPOCHS:-6}
GAN_EPOCHS=${GAN_EPOCHS:-20}
GAN_MAX=${GAN_MAX:-600}          # training images per class for the GAN (0: all)
GAN_WIDTH=${GAN_WIDTH:-32}       # ngf = ndf (the DCGAN paper uses 64)
N_SYNTH=${N_SYNTH:-1280}
CLF_EPOCHS=${CLF_EPOCHS:-10}
SEED=${SEED:-0}
export CXRLAB_CACHE_DIR=${CXRLAB_CACHE_DIR:-/tmp/cxrcache}
export TORCH_HOME=${TORCH_HOME:-../shared/weights/torch}
CXR=${CXR:-.venv/bin/cxr}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
run() { say "\$ cxr $*"; "$CXR" "$@" 2>&1 | tee -a "$LOG"; }

# 0. the benchmark dataset: symlinks, every STRIDE-th training image; official val/test in full
SUB="$OUT/kermany-sub$STRIDE"
if [ ! -d "$SUB" ]; then
  .venv/bin/python - "$DATA" "$SUB" "$STRIDE" <<'EOF'
import os, sys
from pathlib import Path
src, dst, stride = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), int(sys.argv[3])
for split in ("train", "val", "test"):
    for cls in sorted(p.name for p in (src / split).iterdir() if p.is_dir()):
        files = sorted((src / split / cls).iterdir())
        if split == "train":
            files = files[::stride]
        (dst / split / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            os.symlink(f, dst / split / cls / f.name)
        print(split, cls, len(files))
EOF
fi

if [[ " $STAGES " == *" ae "* ]]; then
  say "== autoencoder: train, encode, code CNN vs raw-image CNN"
  run autoencoder train --data "$SUB" --out "$OUT/ae" --epochs "$AE_EPOCHS" --batch-size 32 --seed "$SEED" -q --overwrite
  run autoencoder encode "$OUT/ae" --out "$OUT/codes" -q --overwrite
  run train --data "$OUT/codes" --model code_cnn --epochs "$CODE_EPOCHS" --seed "$SEED" --out "$OUT/code_cnn" -q --overwrite
  run train --data "$SUB" --model small_cnn --image-size 224 --set model.width=0.5 --epochs "$RAW_EPOCHS" \
      --seed "$SEED" --out "$OUT/raw_cnn" -q --overwrite
  run compare "$OUT/raw_cnn" "$OUT/code_cnn" --out "$OUT/compare_ae"
fi

if [[ " $STAGES " == *" gan "* ]]; then
  say "== DCGAN per class, $N_SYNTH samples each, quality"
  for C in NORMAL PNEUMONIA; do
    run gan train --data "$SUB" --class "$C" --out "$OUT/gan_$C" --epochs "$GAN_EPOCHS" --batch-size 32 \
        --ngf "$GAN_WIDTH" --ndf "$GAN_WIDTH" --max-images "$GAN_MAX" --seed "$SEED" -q --overwrite
    run gan sample "$OUT/gan_$C" --n "$N_SYNTH" --out "$OUT/synth/$C" --seed "$SEED" --overwrite
  done
  run gan quality "$OUT/synth" --data "$SUB" --out "$OUT/quality" --seed "$SEED" -q --overwrite
fi

if [[ " $STAGES " == *" clf "* ]]; then
  say "== baseline vs GAN-augmented, same model and seed"
  run train --data "$SUB" --model small_cnn --image-size 64 --epochs "$CLF_EPOCHS" --seed "$SEED" \
      --out "$OUT/base_small_cnn" -q --overwrite
  run train --data "$SUB" --model small_cnn --image-size 64 --epochs "$CLF_EPOCHS" --seed "$SEED" \
      --extra-train "$OUT/synth" --out "$OUT/aug_small_cnn" -q --overwrite
  run train --data "$SUB" --model mobilenet_v2 --pretrained --freeze backbone --epochs 30 --seed "$SEED" \
      --out "$OUT/base_mobilenet_v2" -q --overwrite
  run train --data "$SUB" --model mobilenet_v2 --pretrained --freeze backbone --epochs 30 --seed "$SEED" \
      --extra-train "$OUT/synth" --out "$OUT/aug_mobilenet_v2" -q --overwrite
  run compare "$OUT/base_small_cnn" "$OUT/aug_small_cnn" "$OUT/base_mobilenet_v2" "$OUT/aug_mobilenet_v2" \
      --out "$OUT/compare_gan"
fi
say "done: $OUT"
