#!/usr/bin/env bash
# Trust benchmarks and evidence (issue 4; docs/trust.md), run from the repo root:
#   bash scripts/bench_trust.sh            # OUT=/tmp/cxrlab-trust by default
# 1. `cxr audit` of covid-challenge (4-class and covid,normal) and kermany-224, cold (empty cache)
#    and warm; 2. the CNN the audit is compared with: frozen ImageNet MobileNetV2 (fast path) on the
#    same splits; 3. external validation of the covid,normal model. Wall times include Python start-up.
set -euo pipefail
export TORCH_HOME=${TORCH_HOME:-$PWD/../shared/weights/torch}
D=${DATA:-../shared/data}
OUT=${OUT:-/tmp/cxrlab-trust}
CXR=.venv/bin/cxr
mkdir -p "$OUT"
rm -f "$OUT/walls.tsv"
wall() {  # name, then cxr arguments; logs to $OUT/name.log, appends "name<TAB>seconds" to walls.tsv
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$CXR" "$@" > "$OUT/$name.log" 2>&1 || { cat "$OUT/$name.log"; exit 1; }
  printf '%s\t%.1f\n' "$name" "$(echo "$(date +%s.%N) - $t0" | bc)" | tee -a "$OUT/walls.tsv"
}
export CXRLAB_CACHE_DIR="$OUT/cache"
rm -rf "$CXRLAB_CACHE_DIR"

# 1. audits: cold (nothing decoded yet), then warm (64 px thumbnails cached)
for temp in cold warm; do
  wall "audit-covid4-$temp" audit "$D/covid-challenge" --out "$OUT/audit-covid4"
  wall "audit-covid2-$temp" audit "$D/covid-challenge" --classes covid,normal --out "$OUT/audit-covid2"
  wall "audit-kermany-$temp" audit "$D/kermany-224" --out "$OUT/audit-kermany"
done

# 2. the CNNs on the same splits (same seed → same carved validation split as the audit's)
FROZEN=(--model mobilenet_v2 --pretrained --freeze backbone --overwrite -q)
wall cnn-covid4 train --data "$D/covid-challenge" "${FROZEN[@]}" --out "$OUT/cnn-covid4"
wall cnn-covid2 train --data "$D/covid-challenge" --classes covid,normal "${FROZEN[@]}" --out "$OUT/cnn-covid2"
wall cnn-kermany train --data "$D/kermany-224" "${FROZEN[@]}" --out "$OUT/cnn-kermany"

# 3. external validation of the covid,normal model
#    COVID: covid-challenge's 31 test covid images (there is no second COVID source here: the SAME images
#    as the internal test); Normal: kermany-224's 234 test NORMAL images (same hospital as the training
#    normals, other preprocessing: squashed to 224 px, re-encoded). Other folder layout and class names.
EXT="$OUT/external-set"
rm -rf "$EXT" && mkdir -p "$EXT/COVID" "$EXT/Normal"
cp "$D"/covid-challenge/test/covid/* "$EXT/COVID/"
cp "$D"/kermany-224/test/NORMAL/* "$EXT/Normal/"
wall ext-covid2 evaluate "$OUT/cnn-covid2" --data "$EXT" --label-map COVID=covid,Normal=normal \
  --out "$OUT/ext-covid2"
#    A degraded copy of normals: PneumoniaMNIST's 234 test normals (Kermany, 28 px, upsampled to 224)
wall ext-covid2-mnist evaluate "$OUT/cnn-covid2" --data "$D/pneumoniamnist/pneumoniamnist.npz" \
  --classes normal --out "$OUT/ext-covid2-mnist"

.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
walls = dict(line.split("\t") for line in (out / "walls.tsv").read_text().splitlines())
ci = lambda v: f"[{v[0]:.3f}, {v[1]:.3f}]" if v else ""
print("\n| data | images | metadata-only CV acc. (bal.) | metadata train→test acc. | image-stats CV acc. (bal.) "
      "| chance acc. (bal.) | CNN test acc. [95% CI] | CNN AUC | warnings | audit s cold / warm |")
print("|---|---|---|---|---|---|---|---|---|---|")
for task in ("covid4", "covid2", "kermany"):
    a = json.loads((out / f"audit-{task}" / "audit.json").read_text())
    m, i = a["metadata_baseline"], a["image_baseline"]
    c = json.loads((out / f"cnn-{task}" / "metrics.json").read_text())["test"]
    n = sum(sum(v.values()) for v in a["counts"].values())
    print(f"| {task} | {n} | {m['accuracy']:.3f} ({m['balanced_accuracy']:.3f}) | "
          f"{m['train_to_test']['accuracy']:.3f} {ci(m['train_to_test']['accuracy_ci95'])} | "
          f"{i['accuracy']:.3f} ({i['balanced_accuracy']:.3f}) | {m['chance']:.3f} ({m['chance_balanced']:.3f}) | "
          f"{c['accuracy']:.3f} {ci(c['accuracy_ci95'])} | {c['auc']:.3f} | {len(a['warnings'])} | "
          f"{float(walls[f'audit-{task}-cold']):.1f} / {float(walls[f'audit-{task}-warm']):.1f} |")
    print("  signal:", ", ".join(f"{s['property']} {s['balanced_accuracy']:.2f}" for s in m["signal"]
                                 if s["balanced_accuracy"] is not None), file=sys.stderr)
    for w in a["warnings"]:
        print(f"  [{task}] {w}", file=sys.stderr)
for name in ("ext-covid2", "ext-covid2-mnist"):
    e = json.loads((out / name / "external.json").read_text())
    print(f"\n{name}: external n={e['external']['n']} {e['external']['counts']}, "
          f"overlap with training: {e['overlap_with_training'].get('external_images_in_training', 'n/a')}")
    print("| metric | internal [95% CI] | external [95% CI] | change |")
    print("|---|---|---|---|")
    rows = list(e["metrics"])
    for cls, pc in e["per_class"].items():
        rows += [dict(pc[k], metric=f"{cls} {k}") for k in ("sensitivity", "specificity")]
    if e.get("operating_point"):
        rows += e["operating_point"]["rows"]
    for r in rows:
        f = lambda v: "—" if v is None else f"{v:.3f}"
        change = "—" if r["drop"] is None else f"{-r['drop']:+.3f}"
        print(f"| {r['metric']} | {f(r['internal'])} {ci(r['internal_ci95'])} | "
              f"{f(r['external'])} {ci(r['external_ci95'])} | {change} |")
PY

# 4. the near-duplicate threshold (docs/trust.md): pHash distances among all kermany-224 pairs, and of
#    re-encoded / brightened copies of 40 of its radiographs to their originals
.venv/bin/python - <<'PY'
import io
import numpy as np
from PIL import Image
from cxrlab.audit.duplicates import close_pairs, perceptual_hashes, thumbnails
from cxrlab.audit.properties import content_hash
from cxrlab.data.cache import ImageCache
from cxrlab.data.images import load_gray
from cxrlab.data.index import discover

paths = [s.path for s in discover("../shared/data/kermany-224").samples]
arrays, _ = ImageCache().load_many(paths, 64)
pairs = close_pairs(perceptual_hashes(np.stack(arrays)), max_distance=60)
d = np.array([k for *_, k in pairs])
same = sum(content_hash(paths[i]) == content_hash(paths[j]) for i, j, k in pairs if k <= 37)
print(f"kermany-224: {len(paths)} images; pairs within 24/30/37/40/50 bits: "
      f"{[int((d <= x).sum()) for x in (24, 30, 37, 40, 50)]}; byte-identical among those within 37: {same}; "
      f"closest pair with distance > 0: {d[d > 0].min()} bits")
for name, change in (("JPEG q40 + resize", lambda im: im.resize((int(im.width * .7), int(im.height * .8)))),
                     ("brightness +15%", lambda im: im.point(lambda v: min(255, int(v * 1.15))))):
    dist = []
    for p, a in list(zip(paths, arrays))[:400:10]:
        buf = io.BytesIO()
        change(Image.open(p).convert("L")).save(buf, "JPEG", quality=40 if "q40" in name else 85)
        open("/tmp/cxrlab-copy.jpg", "wb").write(buf.getvalue())
        b = load_gray("/tmp/cxrlab-copy.jpg", 64)
        dist.append(int((perceptual_hashes(thumbnails([a])) != perceptual_hashes(thumbnails([b]))).sum()))
    print(f"{name}: max distance to the original over 40 radiographs: {max(dist)} bits")
PY
