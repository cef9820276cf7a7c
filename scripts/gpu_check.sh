#!/bin/bash
# GPU checks in one command, for a machine with CUDA, its own PyTorch and no network (docs/benchmarks.md §4.4).
# Before: `pip download` the dependencies that machine lacks into .devwheels/ (wheels for its Python) and copy
# ../shared/data/pneumoniamnist into ./shared/data/ (both ignored by git).
# Usage: OUT=results bash scripts/gpu_check.sh   (run folders in $RUNS, default /tmp/gpu-runs; the tables, the
# demo recipe's metrics and the machine's description copied to $OUT, default runs/gpu)
set -u
OUT=${OUT:-runs/gpu}
RUNS=${RUNS:-/tmp/gpu-runs}
PY=${PY:-python3}
mkdir -p "$OUT" "$RUNS"
if [ -d .devwheels ]; then
    $PY -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/cxrlab-deps .devwheels/* \
        > "$RUNS/install.txt" 2>&1 || { echo "install failed:"; tail -n 20 "$RUNS/install.txt"; }
fi
export PYTHONPATH=$PWD/src:/tmp/cxrlab-deps PYTHONUNBUFFERED=1
[ -e ../shared ] || ln -s "$PWD/shared" ../shared
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    echo "cpu cores: $(nproc)"
    $PY -c "import torch, lightning, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'lightning', lightning.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/machine.txt"

echo "== 1. cxr bench: the §4.3 command, CPU and CUDA, fp32 and bf16"
$PY -m cxrlab bench --models mobilenet_v2,resnet18,densenet121,small_cnn --devices cpu,cuda \
    --precision fp32,bf16 --image-size 128 --batch-size 32 --steps 5 --out "$RUNS/bench128"
cp "$RUNS/bench128/bench.md" "$OUT/bench128.md"
echo "== 2. cxr bench: CUDA at 224 px, batch 128"
$PY -m cxrlab bench --models mobilenet_v2,resnet18,densenet121,small_cnn --devices cuda \
    --precision fp32,bf16 --image-size 224 --batch-size 128 --steps 10 --out "$RUNS/bench224"
cp "$RUNS/bench224/bench.md" "$OUT/bench224.md"
echo "== 3. the demo's recipe on CUDA, seed 0 (precision auto)"
start=$SECONDS
$PY -m cxrlab train --config configs/fast_pneumoniamnist.yaml --data ../shared/data/pneumoniamnist/pneumoniamnist.npz \
    --set train.device=cuda --out "$RUNS/pmnist-cuda" -q --no-tensorboard 2>&1 | tail -n 5
echo "wall: $((SECONDS - start)) s"
cp "$RUNS/pmnist-cuda/metrics.json" "$OUT/pmnist-cuda-metrics.json"
$PY -c "import json; m = json.load(open('$OUT/pmnist-cuda-metrics.json')); t = m['test']; \
print('test accuracy', round(t['accuracy'], 4), 'auc', round(t['auc'], 4), m['device'], m['timing'])"
echo "== 4. tests that take the CUDA path when a GPU is present"
$PY -m pytest -q -p no:cacheprovider tests/experiments/test_bench.py tests/training/test_schedule_ema.py 2>&1 \
    | tail -n 15
