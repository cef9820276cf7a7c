#!/usr/bin/env bash
# Issue 3 benchmarks (docs/benchmarks.md, section 2): the model-zoo table, what ImageNet pretraining
# buys MobileNetV2 on covid-challenge (4 classes), and one report recipe end to end on its dataset.
# Run from the repository root with the venv active; results land in $OUT (default runs/bench_zoo).
# Re-run on a quiet machine: the numbers in the docs were measured on a shared, contended 2-core CPU.
set -euo pipefail
OUT=${OUT:-runs/bench_zoo}
COVID=${COVID:-../shared/data/covid-challenge}
KERMANY=${KERMANY:-../shared/data/kermany-224}
export TORCH_HOME=${TORCH_HOME:-../shared/weights/torch}
STEPS=${STEPS:-3}
mkdir -p "$OUT"
part() { [[ -z "${ONLY:-}" || " $ONLY " == *" $1 "* ]]; }   # ONLY="table transfer recipe" picks parts

# 1. timm-style table: params, GMACs, train img/s (batch 16, fwd+bwd+Adam), inference img/s fp32/bf16.
if part table; then
  python scripts/bench_zoo.py table --out "$OUT/table" --steps "$STEPS" --warmup 1 --batch 16
  # second pass: bf16 for the models above 2 GMACs (emulated bf16 is slow here; the first pass skips them)
  python scripts/bench_zoo.py table --out "$OUT/table" --steps "$STEPS" --warmup 1 --batch 16 \
    --bf16-max-gmacs 100 --models vgg16,vgg19,resnet34,resnet50,densenet121,inception_v3
fi

# 2. MobileNetV2, covid-challenge 4 classes (224 px): ImageNet-pretrained vs random init, frozen and
#    fine-tuned. Same data, splits and seed for all four.
if part transfer; then
  T=(--data "$COVID" --model mobilenet_v2 --quiet --overwrite --no-tensorboard)
  cxr train "${T[@]}" --pretrained  --freeze backbone --epochs 30 --out "$OUT/mnv2-pretrained-frozen"
  cxr train "${T[@]}" --random-init --freeze backbone --epochs 30 --out "$OUT/mnv2-random-frozen"
  cxr train "${T[@]}" --pretrained  --freeze none --lr 1e-4 --epochs 15 --out "$OUT/mnv2-pretrained-finetuned"
  cxr train "${T[@]}" --random-init --freeze none --lr 1e-3 --epochs 15 --out "$OUT/mnv2-random-finetuned"
  python scripts/bench_zoo.py runs "$OUT"/mnv2-pretrained-frozen "$OUT"/mnv2-random-frozen \
    "$OUT"/mnv2-pretrained-finetuned "$OUT"/mnv2-random-finetuned | tee "$OUT/transfer.md"
fi

# 3. Report recipes end to end on their real datasets, with wall time: the 32×32 CNN on
#    covid-challenge, and the Kermany "CNN" on kermany-224 (EPOCHS caps it; the recipe says 30).
if part recipe; then
  SECONDS=0
  cxr train --config configs/x32_cnn.yaml --data "$COVID" --out "$OUT/x32_cnn" --quiet --overwrite
  echo "x32_cnn wall time: ${SECONDS} s" | tee "$OUT/recipe_times.txt"
  SECONDS=0
  cxr train --config configs/kermany_cnn.yaml --data "$KERMANY" --out "$OUT/kermany_cnn" --quiet --overwrite \
    ${EPOCHS:+--epochs "$EPOCHS"}
  echo "kermany_cnn wall time: ${SECONDS} s" | tee -a "$OUT/recipe_times.txt"
  python scripts/bench_zoo.py runs "$OUT"/x32_cnn "$OUT"/kermany_cnn | tee "$OUT/recipes.md"
fi
