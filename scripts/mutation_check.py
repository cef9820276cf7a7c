"""Proof that the test suite bites (issue 26): named mutations of the critical code, each killed by tests.

Every mutation is a realistic 1–3 line bug in ``src/cxrlab`` (an off-by-one, ``>=`` for ``>``, a dropped
inversion, a wrong percentile, a patient grouping dropped…) together with the tests that cover that code.
The check runs on a private snapshot of the repository (``git archive`` of ``--ref``, HEAD by default, so
uncommitted edits others are making cannot break or fake a result; ``--worktree`` takes the working tree,
``--overlay FILE…`` copies working-tree files over the snapshot), with a ``shared`` link beside it to the
datasets. For each mutation the snapshot's file gets the edit, ``python -m pytest SELECTION -x`` runs in the
snapshot with ``PYTHONPATH`` at its ``src/`` (the mutated package shadows the editable install: checked
before anything runs), and the file is restored. The working tree is never touched.

Outcomes: ``killed`` (pytest exit 1: a test failed or errored), ``survived`` (exit 0: the suite missed the
bug), ``stale`` (the ``old`` snippet no longer occurs exactly once), ``timeout``, ``error`` (any other exit
status: collection error, usage error, no tests). The selections are first run unmutated (the baseline),
on the same snapshot; a failing (or skipping) baseline stops the check.

    .venv/bin/python scripts/mutation_check.py                    # everything (baseline, then mutations)
    .venv/bin/python scripts/mutation_check.py --list
    .venv/bin/python scripts/mutation_check.py --only youden_no_midpoint,ece_bin_edges --out m.json

Exit status: 0 when every mutation was killed, 1 when one survived or is stale (or another outcome), 2 when
the baseline or the shadowing check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "cxrlab"


@dataclass(frozen=True)
class Mutation:
    """One bug: ``old`` (must occur exactly once in ``src/cxrlab/<file>``) becomes ``new``; ``tests`` are
    the pytest arguments (files, node ids, ``-k``) of the tests that cover that code."""

    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


@dataclass
class Result:
    name: str
    file: str
    outcome: str
    seconds: float
    first_failure: str | None = None
    what: str = ""
    tests: list[str] = field(default_factory=list)
    tail: str = ""


# --------------------------------------------------------------------------- selections

METRICS = ("tests/evaluation/test_metrics.py", "-k", "not inception")
CALIBRATION = ("tests/evaluation/test_metrics.py", "tests/trust/test_calibration.py", "-k", "not inception")
MULTILABEL = ("tests/evaluation/test_multilabel_metrics.py",)
INDEX = ("tests/data/test_index.py",)
LABELS = ("tests/data/test_labels.py",)
PATIENTS = (
    "tests/data/test_patients.py",
    "tests/audit/test_audit.py::test_patients_from_a_csv_column",
    "tests/audit/test_audit.py::test_training_splits_group_patients_from_a_csv",
)
DICOM = ("tests/data/test_dicom.py", "-k", "not train_predict and not audit_reports")
_RF = "tests/trust/test_run_folder.py::"
OVERWRITE = tuple(
    _RF + t
    for t in (
        "test_overwrite_never_deletes_the_data_folder",
        "test_overwrite_never_deletes_the_current_folder",
        "test_overwrite_never_deletes_a_folder_holding_the_current_folder",
        "test_overwrite_replaces_only_a_run_folder_cxrlab_wrote",
        "test_generative_folders_use_the_same_guard",
    )
)
LOCK = tuple(
    _RF + t
    for t in (
        "test_lock_names_the_holder_and_is_released_when_it_dies",
        "test_a_second_writer_stops_at_once_and_sigterm_keeps_a_resumable_run",
    )
)
_AU = "tests/audit/test_audit.py::"
DUPLICATES = tuple(
    _AU + t
    for t in (
        "test_phash_is_imagehash_phash",
        "test_near_duplicate_threshold_separates_copies_from_other_radiographs",
        "test_close_pairs_equals_all_pairs_hamming_at_every_chunk_size",
        "test_near_duplicates_are_at_most_near_distance_bits_apart",
        "test_content_hash_is_the_sha256_of_all_the_bytes",
        "test_cli_audit_finds_planted_leakage_and_shortcut",
    )
)
EXPORT = ("tests/deploy/test_export.py",)


def M(name: str, file: str, old: str, new: str, tests: tuple[str, ...], what: str) -> Mutation:
    return Mutation(name, file, old, new, tests, what)


MUTATIONS: list[Mutation] = [
    # ----------------------------------------------------------------- metrics and thresholds (stats.py)
    M("youden_swapped", "stats.py",
      "i = int(np.argmax(tpr - fpr))", "i = int(np.argmax(fpr - tpr))", METRICS,
      "Youden's J with its terms swapped (fpr - tpr)"),
    M("youden_no_midpoint", "stats.py",
      "return float((thr[i] + thr[i + 1]) / 2) if i + 1 < len(thr) else float(thr[i])",
      "return float(thr[i])", METRICS,
      "threshold on the chosen validation score itself, not halfway to the next lower one"),
    M("target_sensitivity_strict", "stats.py",
      "ok = np.flatnonzero(tpr >= target_sensitivity)", "ok = np.flatnonzero(tpr > target_sensitivity)",
      METRICS, "target sensitivity met only when exceeded (> for >=)"),
    M("target_sensitivity_lowest", "stats.py",
      "i = int(ok[0]) if len(ok) else len(thr) - 1", "i = int(ok[-1]) if len(ok) else len(thr) - 1",
      METRICS, "the lowest threshold meeting the target instead of the highest"),
    M("ece_bin_edges", "stats.py",
      "mask = (conf > lo) & (conf <= hi)", "mask = (conf >= lo) & (conf < hi)", METRICS,
      "ECE bins closed on the left: confidence 1.0 falls out of every bin"),
    M("ece_unweighted", "stats.py",
      "ece += mask.mean() * abs(", "ece += abs(", METRICS,
      "ECE sums the bins' gaps without weighting them by their share of images"),
    M("specificity_tn_missing_diagonal", "stats.py",
      "tn = cm.sum() - cm[c, :].sum() - cm[:, c].sum() + cm[c, c]",
      "tn = cm.sum() - cm[c, :].sum() - cm[:, c].sum()", METRICS,
      "true negatives of a class miss the + cm[c, c] (inclusion-exclusion): specificity too low"),
    M("auc_weighted", "stats.py",
      'multi_class="ovr", average="macro"', 'multi_class="ovr", average="weighted"', METRICS,
      "multi-class AUC weighted by support instead of the macro mean"),
    M("auc_rows_rank_offset", "stats.py",
      "n_pos * (n_pos + 1) / 2", "n_pos * (n_pos - 1) / 2", METRICS,
      "bootstrap (Mann-Whitney) AUC subtracts n(n-1)/2 instead of n(n+1)/2"),
    # ----------------------------------------------------------------- confidence intervals (stats.py)
    M("ci_upper_percentile", "stats.py",
      "float(np.percentile(values, 97.5))", "float(np.percentile(values, 95))", METRICS,
      "upper end of the 95% interval at the 95th percentile (a 92.5% interval)"),
    M("bootstrap_never_draws_last", "stats.py",
      "yield rng.integers(0, n, size=(min(rows, n_boot - start), n))",
      "yield rng.integers(0, n - 1, size=(min(rows, n_boot - start), n))", METRICS,
      "bootstrap resamples never draw the last test image (exclusive upper bound off by one)"),
    M("specificity_ci_is_fpr", "stats.py",
      'out[f"specificity_{c}"] = w @ ((pred != c) & (y != c)) / (w @ (1 - pos))',
      'out[f"specificity_{c}"] = w @ ((pred == c) & (y != c)) / (w @ (1 - pos))',
      METRICS, "the specificity interval is computed on false positives (1 - specificity)"),
    # ----------------------------------------------------------------- operating point (evaluation/)
    M("positive_class_swapped", "evaluation/evaluate.py",
      "return 0 if neg[1] else 1", "return 1 if neg[1] else 0", CALIBRATION,
      "the binary 'disease' class is the one named like normal"),
    M("threshold_on_test", "evaluation/scoring.py",
      'decision = task.choose(cfg, source.predict("val")[0], targets["val"], names)',
      'decision = task.choose(cfg, source.predict("test")[0], targets["test"], names)',
      CALIBRATION, "operating threshold chosen on the test split instead of validation"),
    M("thresholded_strict", "evaluation/evaluate.py",
      'np.where(probs[:, pos] >= op["threshold"], pos, 1 - pos)',
      'np.where(probs[:, pos] > op["threshold"], pos, 1 - pos)', CALIBRATION,
      "a probability exactly at the threshold is called negative (> for >=)"),
    M("multilabel_sensitivity_strict", "evaluation/multilabel.py",
      "pred = p >= thr", "pred = p > thr", MULTILABEL,
      "multi-label: a probability exactly at a finding's threshold is called negative"),
    M("patient_bootstrap_by_image", "stats.py",
      "    if groups is None:\n        return np.arange(n), n",
      "    if True:\n        return np.arange(n), n", METRICS + MULTILABEL,
      "the bootstrap resamples images, splitting patients across resamples"),
    # ----------------------------------------------------------------- patient-grouped splits
    M("carve_ignores_patients", "data/index.py",
      "groups = np.array([s.group for s in pool])", "groups = np.array([s.path for s in pool])", INDEX,
      "carved val/test splits grouped by file, not patient: a patient lands in two splits"),
    M("test_fraction_of_remainder", "data/index.py",
      '_carve(index, "train", "test", test_fraction / (1 - val_fraction), seed + 1)',
      '_carve(index, "train", "test", test_fraction, seed + 1)', INDEX,
      "test carved as test_fraction of what is left after val (16% instead of 20%)"),
    M("multilabel_carve_ignores_patients", "data/index.py",
      "held = group_stratified_holdout(labels, np.array([s.group for s in pool]), fraction, seed)",
      "held = group_stratified_holdout(labels, np.array([s.path for s in pool]), fraction, seed)", LABELS,
      "multi-label carving grouped by file, not patient"),
    M("patient_csv_bom", "data/patients.py",
      'encoding="utf-8-sig"', 'encoding="utf-8"', PATIENTS,
      "a patient CSV saved with a BOM (Excel) loses its first column name"),
    M("patient_csv_backslashes", "data/patients.py",
      'mapping[name.replace("\\\\", "/")] = patient', "mapping[name] = patient", PATIENTS,
      "Windows paths (a\\b.png) in a patient CSV never match the images"),
    M("patient_csv_no_basename", "data/index.py",
      's.group = mapping.get(rel) or mapping.get(os.path.basename(s.path)) or f"file:{s.path}"',
      's.group = mapping.get(rel) or f"file:{s.path}"', PATIENTS,
      "patient CSV rows naming a bare file name are not matched"),
    # ----------------------------------------------------------------- label files (data/labels.py)
    M("nih_separator", "data/labels.py",
      '"findings_column": "Finding Labels", "separator": "|",',
      '"findings_column": "Finding Labels", "separator": ",",', LABELS,
      "NIH preset splits Finding Labels on ',' instead of '|'"),
    M("no_finding_is_a_finding", "data/labels.py",
      '- {"", none} for r in rows]', '- {""} for r in rows]', LABELS,
      "'No Finding' becomes a finding of its own"),
    M("uncertain_float_code", "data/labels.py",
      'code = {**CODES, "-1": uncertain, "-1.0": uncertain, "": blank}',
      'code = {**CODES, "-1": uncertain, "": blank}', LABELS,
      "CheXpert's '-1.0' cells skip the uncertainty policy (kept as -1)"),
    M("blank_policy_dropped", "data/labels.py",
      'code = {**CODES, "-1": uncertain, "-1.0": uncertain, "": blank}',
      'code = {**CODES, "-1": uncertain, "-1.0": uncertain}', LABELS,
      "blank finding cells ignore the blank policy (always NaN)"),
    M("uncertainty_zeros_ones_swapped", "data/labels.py",
      '{"ignore": nan, "zeros": 0.0, "ones": 1.0}', '{"ignore": nan, "zeros": 1.0, "ones": 0.0}', LABELS,
      "uncertainty policies zeros and ones swapped"),
    M("numeric_uncertain_ignored", "data/labels.py",
      "return uncertain if number == -1.0 else float(number)", "return float(number)", LABELS,
      "cells written as -1.00 (not a known code) skip the uncertainty policy"),
    M("tsv_read_as_csv", "data/labels.py",
      'delimiter = "\\t" if first.count(b"\\t") > first.count(b",") else ","', 'delimiter = ","', LABELS,
      "TSV label files are read with ',' as the separator"),
    M("patient_column_ignored", "data/labels.py",
      'return [r[col].strip() or f"file:{p}" for r, p in zip(rows, paths, strict=True)]',
      'return [f"file:{p}" for p in paths]', LABELS,
      "the label file's patient column is ignored: one group per image"),
    M("straddling_not_reported", "data/labels.py",
      "if len(splits) > 1)", "if len(splits) > 2)", LABELS,
      "patients in two splits of the file's split column are not reported"),
    # ----------------------------------------------------------------- DICOM (data/dicom.py)
    M("monochrome1_fast_path_not_inverted", "data/dicom.py",
      "the stored values are the image\n"
      '                return 255 - out if photometric == "MONOCHROME1" else out',
      "the stored values are the image\n                return out", DICOM,
      "8-bit MONOCHROME1 images are not inverted"),
    M("monochrome1_not_inverted", "data/dicom.py",
      'out = _scale(values, lo, hi)\n    return 255 - out if photometric == "MONOCHROME1" else out',
      "out = _scale(values, lo, hi)\n    return out", DICOM,
      "MONOCHROME1 images through the LUTs (12/16 bit, rescaled, windowed) are not inverted"),
    M("rescale_intercept_dropped", "data/dicom.py",
      "hi * float(slope) + float(intercept)", "hi * float(slope)", DICOM,
      "the modality range's upper end misses the rescale intercept"),
    M("bits_allocated_not_stored", "data/dicom.py",
      'bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)',
      'bits = int(ds.get("BitsAllocated") or 8)', DICOM,
      "the stored range from Bits Allocated (16) instead of Bits Stored (12)"),
    M("signed_pixels_as_unsigned", "data/dicom.py",
      "lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)", "lo, hi = 0.0, float(2**bits - 1)",
      DICOM, "signed pixel data given the unsigned range"),
    M("window_wins_over_voi_lut", "data/dicom.py",
      "apply_voi_lut(values, ds, index=0, prefer_lut=True)",
      "apply_voi_lut(values, ds, index=0, prefer_lut=False)",
      DICOM, "the window is applied where a VOI LUT Sequence is given"),
    M("voi_lut_range_dropped", "data/dicom.py",
      'if voi == "lut":', 'if voi == "window":', DICOM,
      "the 8-bit mapping uses the wrong range after a VOI LUT / window"),
    M("scale_truncates", "data/dicom.py",
      "return (scaled + 0.5).astype(np.uint8)", "return scaled.astype(np.uint8)", DICOM,
      "grey levels truncated instead of rounded when mapped to 8 bits"),
    # ----------------------------------------------------------------- the overwrite guard and the run lock
    M("overwrite_any_kind", "runs.py",
      'if marker.get("kind") != kind:', 'if marker.get("kind") is None:', OVERWRITE,
      "--overwrite replaces a cxrlab folder of another kind (a GAN folder as an autoencoder's)"),
    M("overwrite_parent_of_cwd", "runs.py",
      "if cwd is not None and _within(cwd, real):", "if cwd is not None and cwd == real:", OVERWRITE,
      "--overwrite may delete a folder that holds the current folder"),
    M("within_is_equality", "runs.py",
      "return child == parent or parent in child.parents", "return child == parent", OVERWRITE,
      "'inside' means 'the same folder': an --out holding the data is not protected"),
    M("overwrite_foreign_files", "runs.py",
      "foreign = sorted(p.name for p in out.iterdir() if not _allowed(p.name, entries))",
      "foreign = sorted(p.name for p in out.iterdir()"
      ' if not _allowed(p.name, entries) and p.suffix != ".txt")',
      OVERWRITE, "--overwrite deletes a folder holding the user's .txt files"),
    M("clear_deletes_lock", "runs.py",
      "if p.name == LOCK or not _allowed(p.name, entries):", "if not _allowed(p.name, entries):", OVERWRITE,
      "--overwrite deletes the lock file it holds (a second writer could lock a new one)"),
    M("lock_shared", "runs.py",
      "fcntl.LOCK_EX | fcntl.LOCK_NB)\n            except OSError:\n                holder = self.holder()",
      "fcntl.LOCK_SH | fcntl.LOCK_NB)\n            except OSError:\n                holder = self.holder()",
      LOCK,
      "the run lock is shared, so two writers both get it"),
    # ----------------------------------------------------------------- duplicates (audit/)
    M("near_distance_off_by_one", "audit/duplicates.py",
      "least_dot = bits - 2 * max_distance - 0.5", "least_dot = bits - 2 * max_distance + 0.5", DUPLICATES,
      "pairs exactly NEAR_DISTANCE bits apart are not near duplicates (< for <=)"),
    M("distance_not_halved", "audit/duplicates.py",
      "int(round((bits - float(dots[i, j])) / 2))", "int(round(bits - float(dots[i, j])))", DUPLICATES,
      "reported Hamming distance doubled (bits - dot is 2 x distance)"),
    M("phash_drops_dc", "audit/duplicates.py",
      "coeffs = coeffs[:, :HASH_SIZE, :HASH_SIZE]",
      "coeffs = coeffs[:, 1 : HASH_SIZE + 1, 1 : HASH_SIZE + 1]",
      DUPLICATES, "pHash from the DCT block without the lowest frequencies (not imagehash's)"),
    M("exact_pairs_skip_neighbour", "audit/duplicates.py",
      "for j in members[k + 1 :]", "for j in members[k + 2 :]", DUPLICATES,
      "identical files: pairs of neighbours in the hash group are missed"),
    M("exact_pairs_also_near", "audit/duplicates.py",
      "for i, j, d in close_pairs(phashes, max_distance=max_distance) if (i, j) not in exact}",
      "for i, j, d in close_pairs(phashes, max_distance=max_distance)}", DUPLICATES,
      "byte-identical pairs are reported again as near duplicates"),
    M("pair_order_swapped", "audit/duplicates.py",
      "if SPLIT_ORDER.get(splits[j], 3) < SPLIT_ORDER.get(splits[i], 3):",
      "if SPLIT_ORDER.get(splits[j], 3) > SPLIT_ORDER.get(splits[i], 3):", DUPLICATES,
      "a cross-split pair names the test image first (leak counted on the wrong split)"),
    M("sha256_of_first_block", "data/splits.py",
      'return hashlib.file_digest(fh, "sha256").hexdigest()',
      "return hashlib.sha256(fh.read(1 << 16)).hexdigest()", DUPLICATES,
      "exact duplicates by the SHA-256 of the first 64 KB only"),
    # ----------------------------------------------------------------- ONNX parity (deploy/export.py)
    M("parity_nan_passes", "deploy/export.py",
      'if not check["max_abs_diff"] <= tolerance:', 'if check["max_abs_diff"] > tolerance:', EXPORT,
      "a NaN parity difference passes the check"),
    M("parity_mean_not_max", "deploy/export.py",
      "diff = float(np.abs(got.astype(np.float64) - reference).max())",
      "diff = float(np.abs(got.astype(np.float64) - reference).mean())", EXPORT,
      "parity compares the mean |dp| instead of the largest"),
    M("parity_unscaled_input", "deploy/export.py",
      "x = (images.astype(np.float32) / 255.0)[:, None]", "x = images.astype(np.float32)[:, None]", EXPORT,
      "parity feeds the export 0-255 pixels instead of the documented [0, 1]"),
    M("parity_reference_uncalibrated", "deploy/export.py",
      'reference = logits_to_probs(logits, meta.get("temperature", 1.0))',
      "reference = logits_to_probs(logits)", EXPORT,
      "parity reference ignores the run's temperature"),
    M("export_temperature_multiplied", "deploy/export.py",
      "z = self.model((x - self.mean) / self.std) / self.temperature",
      "z = self.model((x - self.mean) / self.std) * self.temperature", EXPORT,
      "the exported graph multiplies the logits by the temperature"),
]  # fmt: skip


# --------------------------------------------------------------------------- running


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def make_tree(dest: Path, ref: str | None, overlay: list[str]) -> Path:
    """A private snapshot of the repository under ``dest/repo``: the files of commit ``ref`` (git archive), or
    with ``ref=None`` the working tree's tracked and untracked, not ignored, files; then the ``overlay``
    files from the working tree on top. ``dest/shared`` links to the datasets beside the clone, so the tests
    find them as in the clone. Returns the snapshot's root (pytest runs there, its ``src`` on PYTHONPATH)."""
    repo = dest / "repo"
    repo.mkdir(parents=True)
    if ref is not None:
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(repo)], input=archive, check=True)
    else:
        for name in git("ls-files", "-co", "--exclude-standard", "-z").split("\0"):
            if name and (ROOT / name).is_file():
                (repo / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, repo / name)
    for name in overlay:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    if (ROOT.parent / "shared").exists():
        (dest / "shared").symlink_to(ROOT.parent / "shared")
    return repo


def _env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("CXRLAB_CACHE_DIR", None)  # a persistent cache of decoded images would hide decoder mutations
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # stale .pyc of a mutated file can never be picked up
    return env


def check_shadowing(repo: Path) -> str:
    """The package a child python imports with the snapshot's src on PYTHONPATH (must be the snapshot's)."""
    proc = subprocess.run(
        [sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"],
        env=_env(repo), cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return proc.stdout.strip() or proc.stderr.strip()


FAILED_LINE = re.compile(r"^(FAILED|ERROR) (.+?)(?: - .*)?$", re.M)  # node ids may hold spaces


def run_pytest(repo: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | str, str]:
    """Run the selection in the snapshot; (exit code or "timeout", output)."""
    basetemp = repo.parent / "pytest"
    shutil.rmtree(basetemp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pytest", *tests, "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           "-rfE", f"--basetemp={basetemp}"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=repo, env=_env(repo), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and the cxr processes it started, nothing else
        out, _ = proc.communicate()
        return "timeout", out


def outcome_of(code: int | str) -> str:
    return {0: "survived", 1: "killed", "timeout": "timeout"}.get(code, f"error (exit {code})")


def is_stale(repo: Path, m: Mutation) -> bool:
    path = repo / "src" / PACKAGE / m.file
    return not path.is_file() or path.read_text(encoding="utf-8").count(m.old) != 1


def run_one(m: Mutation, workers: queue.Queue, timeout: float) -> Result:
    repo = workers.get()
    try:
        if is_stale(repo, m):
            return Result(m.name, m.file, "stale", 0.0, None, m.what, list(m.tests))
        path = repo / "src" / PACKAGE / m.file
        original = path.read_text(encoding="utf-8")
        start = time.monotonic()
        try:
            path.write_text(original.replace(m.old, m.new), encoding="utf-8")
            code, out = run_pytest(repo, m.tests, timeout)
        finally:
            path.write_text(original, encoding="utf-8")
        seconds = time.monotonic() - start
        found = FAILED_LINE.search(out)
        tail = "\n".join(out.strip().splitlines()[-15:]) if code not in (0, 1) else ""
        return Result(m.name, m.file, outcome_of(code), round(seconds, 1), found.group(2) if found else None,
                      m.what, list(m.tests), tail)  # fmt: skip
    finally:
        workers.put(repo)


def table(results: list[Result]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'mutation':<{width}}  {'outcome':<10} {'s':>6}  first failing test"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.outcome:<10} {r.seconds:>6.1f}  {r.first_failure or ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutations (and stale ones) and stop")
    parser.add_argument("--only", help="comma-separated mutation names")
    parser.add_argument("--jobs", type=int, default=1, help="mutations run at once (each on its own copy)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per pytest run (default 600)")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--ref", default="HEAD", help="the commit whose src/ and tests/ are mutated and run")
    parser.add_argument("--worktree", action="store_true", help="use the working tree instead of --ref")
    parser.add_argument(
        "--overlay", nargs="*", default=[], help="working-tree files copied over the snapshot"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the selections")
    args = parser.parse_args(argv)

    chosen = MUTATIONS
    names = [m.name for m in MUTATIONS]
    assert len(set(names)) == len(names), "mutation names must be unique"
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            parser.error(f"unknown mutation(s): {', '.join(unknown)} (see --list)")
        chosen = [m for m in MUTATIONS if m.name in wanted]
    ref = None if args.worktree else git("rev-parse", args.ref).strip()
    source = "the working tree" if ref is None else f"commit {ref[:12]}"
    if args.overlay:
        source += f" + {', '.join(args.overlay)} from the working tree"
    with tempfile.TemporaryDirectory(prefix="cxrlab-mutation-") as tmp:
        snapshot = make_tree(Path(tmp), ref, args.overlay)
        stale = {m.name for m in chosen if is_stale(snapshot, m)}
    if args.list:
        for m in chosen:
            mark = "  [STALE: snippet not found exactly once]" if m.name in stale else ""
            print(f"{m.name:<36} {m.file:<26} {m.what}{mark}\n{'':<37}tests: {' '.join(m.tests)}")
        print(f"{len(chosen)} mutations, {len(stale)} stale")
        return 1 if stale else 0

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cxrlab-mutation-") as tmp:
        repos = [make_tree(Path(tmp) / f"w{k}", ref, args.overlay) for k in range(max(1, args.jobs))]
        print(f"source: {source}", flush=True)
        imported = check_shadowing(repos[0])
        expected = str(repos[0] / "src" / PACKAGE / "__init__.py")
        print(f"shadowing check: {PACKAGE} imported from {imported}", flush=True)
        if imported != expected:
            print(f"error: expected {expected}: the mutated copy would not be tested", file=sys.stderr)
            return 2
        if not args.no_baseline:
            selections = list(dict.fromkeys(m.tests for m in chosen if m.name not in stale))
            for sel in selections:
                start = time.monotonic()
                code, out = run_pytest(repos[0], sel, args.timeout)
                summary = out.strip().splitlines()[-1] if out.strip() else ""
                took = time.monotonic() - start
                print(f"baseline {' '.join(sel)}: exit {code} in {took:.0f} s ({summary})", flush=True)
                if code != 0 or " skipped" in summary:
                    print(out[-4000:], file=sys.stderr)
                    print(
                        "error: the unmutated selection does not pass cleanly; fix that first",
                        file=sys.stderr,
                    )
                    return 2
        workers: queue.Queue = queue.Queue()
        for repo in repos:
            workers.put(repo)
        lock = threading.Lock()
        results: dict[str, Result] = {}

        def task(m: Mutation) -> None:
            r = run_one(m, workers, args.timeout)
            with lock:
                results[m.name] = r
                print(f"[{len(results)}/{len(chosen)}] {r.name}: {r.outcome} in {r.seconds:.0f} s"
                      f"{f' by {r.first_failure}' if r.first_failure else ''}", flush=True)  # fmt: skip
                if r.tail:
                    print(r.tail, flush=True)

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(task, chosen))
    ordered = [results[m.name] for m in chosen]
    total_s = time.monotonic() - t0
    killed = sum(r.outcome == "killed" for r in ordered)
    print()
    print(table(ordered))
    print(f"\nscore: {killed}/{len(ordered)} killed in {total_s / 60:.1f} min")
    bad = [r for r in ordered if r.outcome != "killed"]
    for r in bad:
        print(f"NOT KILLED: {r.name} ({r.outcome}): {r.what}")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"score": f"{killed}/{len(ordered)}", "total_s": round(total_s, 1), "source": source,
                        "python": sys.version.split()[0], "results": [asdict(r) for r in ordered]}, indent=2)
            + "\n", encoding="utf-8",
        )  # fmt: skip
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
