"""The same trained runs scored on their test split with and without test-time shift averaging
(docs/benchmarks.md §12.4): the difference is the averaging alone, with no training noise in it.

Usage: python scripts/tta_paired.py SHIFTS RUN [RUN ...]    e.g.  0,2 runs/pmnist/seed-*
SHIFTS: pixels, the first is the reference (0 = the image alone). Prints AUC and argmax accuracy per run and
shift, then mean ± std over the runs and a paired t-test against the reference.
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.stats import ttest_rel
from sklearn.metrics import roc_auc_score

from cxrlab.evaluation.evaluate import logits_to_probs, positive_index, predict_images
from cxrlab.evaluation.inference import load_run, prepare_eval_data


def scores(run: str, shifts: list[int]) -> dict[int, tuple[float, float]]:
    """(AUC, argmax accuracy) of ``run``'s test split at each shift, at the run's own precision."""
    loaded = load_run(run)
    data = prepare_eval_data(loaded, None, None, None)
    images, y = data.images["test"], data.labels["test"]
    meta, pos = loaded.meta, positive_index(loaded.classes)
    out = {}
    for shift in shifts:
        logits, _ = predict_images(
            loaded.model, images, meta["channels"], tuple(meta["mean"]), tuple(meta["std"]),
            precision=loaded.cfg.train.precision, tta_shift=shift,
        )  # fmt: skip
        probs = logits_to_probs(logits, meta.get("temperature", 1.0))
        out[shift] = (float(roc_auc_score(y == pos, probs[:, pos])), float((probs.argmax(1) == y).mean()))
    return out


def main(argv: list[str]) -> None:
    shifts = [int(s) for s in argv[0].split(",")]
    rows = []
    for run in argv[1:]:
        rows.append(scores(run, shifts))
        print(
            run, "  ".join(f"{s} px: AUC {a:.4f} acc {b:.3f}" for s, (a, b) in rows[-1].items()), flush=True
        )
    ref = shifts[0]
    for shift in shifts:
        auc, acc = (np.array([r[shift][i] for r in rows]) for i in (0, 1))
        auc0, acc0 = (np.array([r[ref][i] for r in rows]) for i in (0, 1))
        line = (
            f"{shift} px: AUC {auc.mean():.4f} ± {auc.std(ddof=1):.4f}, "
            f"accuracy {acc.mean():.3f} ± {acc.std(ddof=1):.3f}"
        )
        if shift != ref and len(rows) > 1:
            line += (
                f"; against {ref} px: AUC {np.mean(auc - auc0):+.4f} (p = {ttest_rel(auc, auc0).pvalue:.3g}, "
                f"higher on {int(np.sum(auc > auc0))} of {len(rows)}), accuracy {np.mean(acc - acc0):+.4f} "
                f"(p = {ttest_rel(acc, acc0).pvalue:.3g})"
            )
        print(line)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1:])
