"""Markdown tables of scripts/bench_generative.sh's results (docs/benchmarks.md, section 5).

    .venv/bin/python scripts/bench_generative_summary.py runs/bench6 > runs/bench6/summary.md

Reads only what the runs wrote: autoencoder.json, codes.json, gan.json, quality.json, each run's
metrics.json and `cxr compare`'s pairwise.csv (exact McNemar test on the same test images).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _acc(m: dict) -> str:
    t = m["test"]
    lo, hi = t["accuracy_ci95"]
    return f"{t['accuracy']:.4f} [{lo:.4f}, {hi:.4f}]"


def _counts(m: dict) -> str:
    real, synth = m["data"].get("real_train", {}), m["data"].get("synthetic_train", {})
    return ", ".join(f"{c} {real.get(c, '?')} + {synth.get(c, 0)}" for c in m["classes"])


def _pairs(folder: Path) -> list[dict]:
    path = folder / "pairwise.csv"
    return list(csv.DictReader(path.open())) if path.is_file() else []


def _total(counts: dict) -> int:
    return sum(sum(v.values()) for v in counts.values())


def _s(v) -> str:
    return "—" if v is None else f"{float(v):.1f}"


def main(root: Path) -> None:
    ae, codes = _load(root / "ae" / "autoencoder.json"), _load(root / "codes" / "codes.json")
    code_run, raw_run = _load(root / "code_cnn" / "metrics.json"), _load(root / "raw_cnn" / "metrics.json")
    if ae and ae.get("status") == "finished":
        print("### Autoencoder\n")
        print("| epochs | train MSE (last) | val MSE (best) | test MSE | train s | s/epoch |")
        print("|---|---|---|---|---|---|")
        print(
            f"| {ae['epochs_done']} | {ae['train_mse']:.5f} | {ae['val_mse']:.5f} | {ae['test_mse']:.5f} | "
            f"{ae['train_s']:.0f} | {ae['train_s'] / ae['epochs_done']:.0f} |\n"
        )
    if code_run or raw_run:
        print(
            "| run | test accuracy [95% CI] | AUC | n | epochs | encode s | train s "
            "| encode + train s | run total s |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for name, m in (("raw-image CNN", raw_run), ("code CNN", code_run)):
            if not m:
                continue
            t = m["timing"]
            enc = t.get("encode_s")
            both = (enc or 0) + t["train_s"]
            print(
                f"| {name} ({m['model']}) | {_acc(m)} | {m['test']['auc']:.4f} | {m['test']['n']} | "
                f"{t['epochs']} | {_s(enc)} | {_s(t['train_s'])} | {_s(both)} | {_s(t['total_s'])} |"
            )
        if codes:
            print(
                f"\nCodes: {'×'.join(map(str, codes['shape']))} float16, encode {codes['encode_s']:.1f} s "
                f"(+ {codes['decode_s']:.1f} s reading images) for {_total(codes['counts'])} images."
            )
        for p in _pairs(root / "compare_ae"):
            print(
                f"\nPaired (McNemar, same {p['n']} test images): "
                f"{p['run_a']} {float(p['accuracy_a']):.4f} vs "
                f"{p['run_b']} {float(p['accuracy_b']):.4f}, difference {float(p['difference']):+.4f} "
                f"[{float(p['difference_ci95_lo']):+.4f}, {float(p['difference_ci95_hi']):+.4f}], "
                f"p = {float(p['p_mcnemar']):.3g} → {p['verdict']}"
            )
        print()
    gans = [g for g in (_load(d / "gan.json") for d in sorted(root.glob("gan_*"))) if g]
    if gans:
        print("### DCGAN per class\n")
        print(
            "| class | training images | epochs | train s | s/epoch | final loss D / G "
            "| mean D(x) / D(G(z)) |"
        )
        print("|---|---|---|---|---|---|---|")
        for g in gans:
            rows = list(csv.DictReader((root / f"gan_{g['class']}" / "losses.csv").open()))
            last = rows[-1]
            print(
                f"| {g['class']} | {g['n_train_images']} | {g['epochs_done']} | {g['train_s']:.0f} | "
                f"{g['train_s'] / g['epochs_done']:.1f} | "
                f"{float(last['loss_d']):.3f} / {float(last['loss_g']):.3f} | "
                f"{float(last['d_real']):.3f} / {float(last['d_fake']):.3f} |"
            )
        print()
    q = _load(root / "quality" / "quality.json")
    if q:
        print("### Synthetic image quality\n")
        print(
            "| class | detector | accuracy [95% CI] | AUC | median NN dist synthetic / real "
            "| synthetic↔synthetic | share < real p5 |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, e in q["classes"].items():
            m = e["memorization"]
            for t in e["two_sample"]:
                lo, hi = t["accuracy_ci95"]
                print(
                    f"| {name} | {t['detector']} | {t['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] "
                    f"| {t['auc']:.3f} | "
                    f"{m['synthetic_nn_median']:.4f} / {m['real_nn_median']:.4f} | "
                    f"{m['synthetic_self_nn_median']:.4f} | {m['share_closer_than_real_p5']:.3f} |"
                )
        print()
    runs = [
        (d.name, _load(d / "metrics.json")) for d in sorted(root.glob("base_*")) + sorted(root.glob("aug_*"))
    ]
    runs = [(n, m) for n, m in runs if m]
    if runs:
        print("### Baseline vs GAN-augmented\n")
        print(
            "| run | model | train images (real + synthetic) | test accuracy [95% CI] | AUC "
            "| epochs | train s |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, m in runs:
            print(
                f"| {name} | {m['model']} | {_counts(m)} | {_acc(m)} | {m['test']['auc']:.4f} | "
                f"{m['timing']['epochs']} | {_s(m['timing']['train_s'])} |"
            )
        for p in _pairs(root / "compare_gan"):
            a, b = Path(p["run_a"]).name, Path(p["run_b"]).name
            if a.split("_", 1)[1] != b.split("_", 1)[1]:
                continue  # only the same model, baseline vs augmented
            print(
                f"\nPaired (McNemar, same {p['n']} test images): {a} {float(p['accuracy_a']):.4f} vs {b} "
                f"{float(p['accuracy_b']):.4f}, difference {float(p['difference']):+.4f} "
                f"[{float(p['difference_ci95_lo']):+.4f}, {float(p['difference_ci95_hi']):+.4f}], "
                f"p = {float(p['p_mcnemar']):.3g} (Holm {float(p['p_holm']):.3g}) → {p['verdict']}"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench6"))
