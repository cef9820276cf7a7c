"""Measure a run's out-of-distribution guard (docs/trust.md, "The out-of-distribution guard").

    .venv/bin/python scripts/measure_ood.py RUN [--shared ../shared/data] [--json OUT.json]

For RUN (a covid-challenge covid-vs-normal run with ood.json), prints: the share of its own test images
kept, and for each outside set the AUROC of the guard's score (sklearn.metrics.roc_auc_score, the run's
test images as negatives, the set's images as positives), the share the score alone flags, and the share
the full verdict flags (score + acquisition checks, with the DICOM headers or the label file's view column):

- nih-hires: NIH ChestX-ray14 adult frontal radiographs (PNG);
- dicom: the chest DICOMs of ../shared/data/dicom (RSNA, SIIM, NIH);
- covid-ieee lateral: the images of covid-ieee whose labels.csv view is L, and how many of them are byte for
  byte among the run's training images (covid-challenge's COVID class comes from the same collection);
- non-chest: pydicom's bundled CT and MR test files (pydicom.data.get_testdata_file) that cxrlab decodes,
  one per distinct image.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float | None:
    """AUROC of a score that should be higher outside (sklearn's roc_auc_score)."""
    from sklearn.metrics import roc_auc_score

    if not len(inside) or not len(outside):
        return None
    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return round(float(roc_auc_score(y, np.r_[inside, outside])), 4)


def ablation(train: np.ndarray, val: np.ndarray, test: np.ndarray, train_y: np.ndarray,
             sets: dict[str, np.ndarray]) -> dict[str, dict]:  # fmt: skip
    """Other simple detectors on the same features (not what cxrlab ships; for docs/trust.md): the share of
    the test images kept at the validation 95th percentile and the AUROC against each outside set."""
    from sklearn.covariance import LedoitWolf
    from sklearn.neighbors import NearestNeighbors

    def l2(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def maha(tr: np.ndarray):
        lw = LedoitWolf().fit(tr)
        return lambda x: lw.mahalanobis(x)

    def class_tied(tr: np.ndarray, y: np.ndarray):  # Lee et al. 2018: class means, one shared covariance
        classes = np.unique(y)
        means = [tr[y == c].mean(0) for c in classes]
        centred = np.concatenate([tr[y == c] - m for c, m in zip(classes, means, strict=True)])
        lw = LedoitWolf(assume_centered=True).fit(centred)
        return lambda x: np.min([np.einsum("ij,jk,ik->i", x - m, lw.precision_, x - m) for m in means], 0)

    def knn(tr: np.ndarray, k: int):  # Sun et al. 2022: k-th neighbour of L2-normalised features
        nn = NearestNeighbors(n_neighbors=k).fit(l2(tr))
        return lambda x: nn.kneighbors(l2(x))[0][:, -1]

    variants = {
        "Mahalanobis, Ledoit-Wolf (shipped)": maha(train),
        "Mahalanobis on L2-normalised features": (lambda f: lambda x: f(l2(x)))(maha(l2(train))),
        "class-conditional Mahalanobis, tied covariance": class_tied(train, train_y),
        "k-NN distance, k=1, L2-normalised": knn(train, 1),
        "k-NN distance, k=5, L2-normalised": knn(train, 5),
        "k-NN distance, k=10, L2-normalised": knn(train, 10),
    }
    out = {}
    for name, score in variants.items():
        thr = np.percentile(score(val), 95)
        st = score(test)
        out[name] = {"test_kept": round(float(np.mean(st <= thr)), 4),
                     **{k: _auroc(st, score(v)) for k, v in sets.items()}}  # fmt: skip
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--shared", default="../shared/data")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()

    from cxrlab.data.images import load_gray
    from cxrlab.evaluation.inference import load_run, prepare_eval_data
    from cxrlab.evaluation.ood import OodGuard, acquisition_reasons, dicom_header, features

    shared = Path(args.shared)
    loaded = load_run(args.run)
    guard = OodGuard.load(loaded.path)
    if guard is None:
        sys.exit(f"{args.run} has no OOD guard (ood.json); train it with this cxrlab")
    size, resize = loaded.meta["image_size"], loaded.meta.get("resize", "squash")

    test = prepare_eval_data(loaded, None, None, None)
    id_scores = guard.score(features(loaded, test.images["test"]))
    kept = float(np.mean(id_scores <= guard.threshold))
    train_hashes = {
        row["sha256"]
        for row in _rows(loaded.path / "splits.csv")
        if row.get("split") in ("train", "val") and row.get("sha256")
    }

    id_feats = features(loaded, test.images["test"])
    id_class = np.array([loaded.classes[int(k)] for k in test.labels["test"]])
    feats_of: dict[str, np.ndarray] = {}

    def outside(name: str, paths: list[Path], headers: list[dict | None]) -> dict:
        images, used, heads = [], [], []
        for p, h in zip(paths, headers, strict=True):
            try:
                images.append(load_gray(p, size, resize))
            except Exception as exc:  # noqa: BLE001 - a file cxrlab refuses is not scored; say which
                print(f"  {name}: {p.name} not decoded ({exc.__class__.__name__})", file=sys.stderr)
                continue
            used.append(p)
            heads.append(h)
        feats = features(loaded, np.stack(images))
        feats_of[name] = feats
        scores = guard.score(feats)
        verdicts = guard.assess(feats, heads)
        new = np.array([_sha(p) not in train_hashes for p in used])
        return {
            "images": len(used),
            "auroc": _auroc(id_scores, scores),
            # against each class of the run's test images alone
            "auroc_by_test_class": {c: _auroc(id_scores[id_class == c], scores) for c in loaded.classes},
            # leaving out images that are byte for byte training or validation images of the run
            "auroc_not_in_training": _auroc(id_scores, scores[new]) if new.any() else None,
            "flagged_by_score": round(float(np.mean(scores > guard.threshold)), 4),
            "flagged_by_verdict": round(float(np.mean([not v["in_distribution"] for v in verdicts])), 4),
            "flagged_by_acquisition": round(float(np.mean([bool(acquisition_reasons(h)) for h in heads])), 4),
            "in_training_data": sum(_sha(p) in train_hashes for p in used),
            "median_score": round(float(np.median(scores)), 2),
            "files": [p.name for p in used],
        }

    sets: dict[str, dict] = {}
    nih = sorted((shared / "nih-hires" / "images").glob("*.png"))
    sets["nih-hires"] = outside("nih-hires", nih, [None] * len(nih))
    dicoms = sorted((shared / "dicom").glob("*.dcm"))
    sets["dicom"] = outside("dicom", dicoms, [dicom_header(p) for p in dicoms])
    ieee = shared / "covid-ieee"
    rows = _rows(ieee / "labels.csv")
    lateral = [r for r in rows if r["view"].strip().upper() == "L"]
    sets["covid-ieee lateral"] = outside(
        "covid-ieee lateral", [ieee / "images" / r["filename"] for r in lateral],
        [{"view": r["view"]} for r in lateral],
    )  # fmt: skip
    import pydicom
    from pydicom.data import get_testdata_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        candidates = []
        for f in sorted(get_testdata_files("*.dcm")):
            try:
                modality = pydicom.dcmread(f, stop_before_pixels=True, force=True).get("Modality")
            except Exception:  # noqa: BLE001 - not a readable DICOM: not a candidate
                continue
            if modality in ("CT", "MR"):
                candidates.append(Path(f))
    distinct, seen = [], set()
    for f in candidates:  # MR_small.dcm comes in ten transfer syntaxes: one image
        try:
            key = hashlib.sha256(load_gray(f, size, resize).tobytes()).hexdigest()
        except Exception:  # noqa: BLE001
            key = f.name
        if key not in seen:
            seen.add(key)
            distinct.append(f)
    sets["non-chest (pydicom CT/MR)"] = outside("non-chest", distinct, [dicom_header(p) for p in distinct])

    # the ablation's training and validation features: the run's own split, recomputed at fp32
    split_rows = _rows(loaded.path / "splits.csv")
    by_split = {sp: [r for r in split_rows if r["split"] == sp] for sp in ("train", "val")}
    tv = {sp: features(loaded, np.stack([load_gray(r["path"], size, resize) for r in rows]))
          for sp, rows in by_split.items()}  # fmt: skip
    train_y = np.array([r["class"] for r in by_split["train"]])
    other = ablation(tv["train"], tv["val"], id_feats, train_y, feats_of)

    result = {
        "run": str(loaded.path),
        "threshold": round(guard.threshold, 4),
        "fit_images": guard.info.get("fit_images"),
        "val_images": guard.info.get("val_images"),
        "test_images": len(id_scores),
        "test_kept_share": round(kept, 4),
        "outside": sets,
        "ablation": other,
    }
    print(f"{loaded.path}: threshold {guard.threshold:.2f} ({guard.info.get('fit_images')} training, "
          f"{guard.info.get('val_images')} validation images); own test images kept: {kept:.1%} of "
          f"{len(id_scores)}")  # fmt: skip
    print(f"{'set':28} {'n':>4} {'AUROC':>6} {'score>thr':>9} {'verdict out':>11} {'in train':>8}")
    for name, r in sets.items():
        print(f"{name:28} {r['images']:4d} {r['auroc']:6.3f} {r['flagged_by_score']:9.0%} "
              f"{r['flagged_by_verdict']:11.0%} {r['in_training_data']:8d}")  # fmt: skip
    print("ablation (AUROC per set; test images kept at the validation 95th percentile):")
    for name, r in other.items():
        print(f"  {name:48} kept {r['test_kept']:.0%}  "
              + "  ".join(f"{k} {v:.3f}" for k, v in r.items() if k != "test_kept"))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
