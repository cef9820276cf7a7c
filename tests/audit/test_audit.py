"""The data audit on real radiographs: planted leakage and shortcuts are found, a clean control is not
flagged, and the known problems of the shared datasets show up."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlab.audit.duplicates import NEAR_DISTANCE, close_pairs, perceptual_hashes, thumbnails
from cxrlab.data.images import load_gray
from tests.browser import check_page
from tests.conftest import run_cli


def _reencoded(path: Path, size: tuple[int, int], quality: int) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("L").resize(size).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_phash_is_imagehash_phash(covid_dir):
    import imagehash

    files = sorted((covid_dir / "train" / "covid").iterdir())[:12]
    thumbs = thumbnails([load_gray(f, 64) for f in files])
    ref = np.stack([imagehash.phash(Image.fromarray(t), hash_size=16).hash.reshape(-1) for t in thumbs])
    assert (perceptual_hashes(thumbs) == ref).all()
    assert (perceptual_hashes(thumbs, chunk=5) == ref).all()  # chunks of 5, 5 and 2: the same bits


def test_near_duplicate_threshold_separates_copies_from_other_radiographs(kermany_dir, tmp_path):
    files = sorted((kermany_dir / "train" / "PNEUMONIA").iterdir())[:60:2]  # 30 different radiographs
    hashes = perceptual_hashes(thumbnails([load_gray(f, 64) for f in files]))
    assert close_pairs(hashes) == []  # no two different radiographs within the threshold
    copies = []
    for i, f in enumerate(files[:10]):
        (tmp_path / f"{i}.jpg").write_bytes(_reencoded(f, (180, 200), quality=40))
        copies.append(load_gray(tmp_path / f"{i}.jpg", 64))
    pairs = close_pairs(perceptual_hashes(thumbnails(copies)), hashes)
    assert sorted((i, j) for i, j, _ in pairs) == [(i, i) for i in range(10)]
    assert max(d for *_, d in pairs) <= NEAR_DISTANCE


@pytest.mark.parametrize("chunk_cells", [1, 7, 50, 1 << 24])
def test_close_pairs_equals_all_pairs_hamming_at_every_chunk_size(chunk_cells):
    """The chunked dot-product search finds exactly the pairs an all-pairs XOR count finds."""
    rng = np.random.default_rng(3)
    base = rng.random((30, 256)) < 0.5
    near = base[:8] ^ (rng.random((8, 256)) < 0.06)  # ~15 bits flipped: near copies of rows 0-7
    hashes = np.concatenate([base, near, base[:2]])  # and two exact copies
    dist = (hashes[:, None, :] != hashes[None, :, :]).sum(-1)
    want = [(i, j, int(dist[i, j])) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
            if dist[i, j] <= NEAR_DISTANCE]  # fmt: skip
    assert len(want) >= 10
    assert close_pairs(hashes, chunk_cells=chunk_cells) == want
    cross = [
        (i, j, int(dist[i, 30 + j])) for i in range(30) for j in range(10) if dist[i, 30 + j] <= NEAR_DISTANCE
    ]
    assert close_pairs(hashes[:30], hashes[30:], chunk_cells=chunk_cells) == cross
    assert close_pairs(hashes, max_distance=-1) == [] and close_pairs(hashes[:0]) == []


def test_near_duplicates_are_at_most_near_distance_bits_apart():
    rng = np.random.default_rng(4)
    base = rng.random(256) < 0.5
    flipped = {k: base ^ (rng.permutation(256) < k) for k in (NEAR_DISTANCE, NEAR_DISTANCE + 1)}
    at, beyond = flipped[NEAR_DISTANCE], flipped[NEAR_DISTANCE + 1]
    assert close_pairs(np.stack([base, at])) == [(0, 1, NEAR_DISTANCE)]  # at the threshold: near
    assert close_pairs(np.stack([base, beyond])) == []  # one bit more: not
    assert close_pairs(base[None], np.stack([beyond, at])) == [(0, 1, NEAR_DISTANCE)]


def test_content_hash_is_the_sha256_of_all_the_bytes(tmp_path):
    """Exact duplicates are files with the same SHA-256 of all their bytes: a real 2 MB DICOM and a copy
    with its last pixel byte changed are different files."""
    import hashlib

    from cxrlab.data.splits import file_sha256 as content_hash
    from tests.conftest import DATA, _need

    real = _need(DATA / "dicom", "real DICOMs")
    source = max(real.glob("*.dcm"), key=lambda p: p.stat().st_size)
    data = source.read_bytes()
    assert len(data) > 1 << 20
    changed = tmp_path / "changed.dcm"
    changed.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert content_hash(str(source)) == hashlib.sha256(data).hexdigest()
    assert content_hash(str(changed)) == hashlib.sha256(changed.read_bytes()).hexdigest()
    assert content_hash(str(changed)) != content_hash(str(source))


@pytest.fixture(scope="module")
def planted(tmp_path_factory, kermany_dir) -> dict[str, Path]:
    """Real Kermany images with planted problems: NORMAL re-saved as 256 px PNG (an acquisition
    shortcut), an exact and a near copy of training images in test, one patient in train and test."""
    root = tmp_path_factory.mktemp("planted") / "data"
    pneu = sorted((kermany_dir / "train" / "PNEUMONIA").iterdir())
    normal = sorted((kermany_dir / "train" / "NORMAL").iterdir())
    by_patient: dict[str, list[Path]] = {}
    for f in pneu:
        by_patient.setdefault(f.name.split("_")[0], []).append(f)
    shared = next(v for v in by_patient.values() if len(v) >= 2)
    used = set(shared)
    pneu = [f for f in pneu if f not in used][:40]
    for split, files in (("train", pneu[:30] + shared[:1]), ("test", pneu[30:40] + shared[1:2])):
        (root / split / "PNEUMONIA").mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / split / "PNEUMONIA" / f.name)
    for split, files in (("train", normal[:30]), ("test", normal[30:40])):
        (root / split / "NORMAL").mkdir(parents=True)
        for f in files:
            Image.open(f).convert("L").resize((256, 256)).save(root / split / "NORMAL" / f"{f.stem}.png")
    exact = root / "test" / "PNEUMONIA" / "copy_exact.jpeg"
    shutil.copy(pneu[0], exact)
    near = root / "test" / "PNEUMONIA" / "copy_near.jpeg"
    near.write_bytes(_reencoded(pneu[1], (200, 210), quality=60))
    return {
        "root": root,
        "exact_src": root / "train" / "PNEUMONIA" / pneu[0].name,
        "exact": exact,
        "near_src": root / "train" / "PNEUMONIA" / pneu[1].name,
        "near": near,
        "patient": Path(shared[0].name.split("_")[0]),
    }


def test_cli_audit_finds_planted_leakage_and_shortcut(planted, tmp_path):
    out = tmp_path / "audit"
    proc = run_cli("audit", str(planted["root"]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    a = json.loads((out / "audit.json").read_text())
    assert a["counts"]["test"] == {"NORMAL": 10, "PNEUMONIA": 13}
    pairs = {(p["a"], p["b"]): p for p in a["duplicates"]["cross_split"]}
    exact = pairs[(str(planted["exact_src"]), str(planted["exact"]))]
    near = pairs[(str(planted["near_src"]), str(planted["near"]))]
    assert exact["kind"] == "exact" and exact["a_split"] == "train" and exact["b_split"] == "test"
    assert near["kind"] == "near" and near["distance"] <= 24  # re-encoded, resized: not byte-identical
    assert len(pairs) == 2
    assert [p["patient"] for p in a["patients"]["cross_split"]] == [str(planted["patient"])]
    meta, image = a["metadata_baseline"], a["image_baseline"]
    assert meta["accuracy"] >= 0.95 and meta["chance"] < 0.6 and meta["balanced_accuracy"] >= 0.95
    assert {s["property"] for s in meta["signal"][:4]} >= {"format", "width"}
    assert 0 <= image["accuracy"] <= 1 and "train_to_test" in image
    # Kermany names its patients (personN_): the baselines' CIs resample patients, as the model's metrics do
    assert meta["ci_unit"] == image["ci_unit"] == image["train_to_test"]["ci_unit"] == "patient"
    text = " ".join(a["warnings"])
    for phrase in ("acquisition properties alone", "exact copies", "near duplicates", "1 patient(s)"):
        assert phrase in text, phrase
    assert "warning: Labels can be predicted" in proc.stderr
    html = (out / "audit.html").read_text()
    assert html.count("data:image/png;base64,") == 1 and "copy_exact.jpeg" in html
    check_page(out / "audit.html", "audit")


def test_clean_control_raises_no_shortcut_or_leakage_warning(kermany_dir, tmp_path):
    # two made-up classes drawn from the same source and format: nothing should be flagged
    files = sorted((kermany_dir / "train" / "NORMAL").iterdir())[100:220]
    for split, chunk in (("train", files[:80]), ("test", files[80:])):
        for i, f in enumerate(chunk):
            folder = tmp_path / "data" / split / ("a" if i % 2 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, folder / f.name)
    proc = run_cli("audit", str(tmp_path / "data"), "--out", str(tmp_path / "audit"))
    assert proc.returncode == 0, proc.stderr
    a = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert a["duplicates"]["cross_split"] == [] and a["patients"]["cross_split"] == []
    assert a["metadata_baseline"]["balanced_accuracy"] < 0.7
    assert not any("acquisition properties" in w or "thumbnails" in w for w in a["warnings"])


def test_patients_from_a_csv_column(planted, tmp_path):
    root = planted["root"]
    a = next((root / "train" / "NORMAL").iterdir())
    b = next((root / "test" / "NORMAL").iterdir())
    csv = tmp_path / "meta.csv"
    csv.write_text(f"filename,patientid\n{a.name},P-7\ntrain/NORMAL/{b.name},P-9\ntest/NORMAL/{b.name},P-7\n")
    proc = run_cli("audit", str(root), "--patient-csv", str(csv), "--out", str(tmp_path / "audit"))
    assert proc.returncode == 0, proc.stderr
    p = json.loads((tmp_path / "audit" / "audit.json").read_text())["patients"]
    assert [x["patient"] for x in p["cross_split"]] == ["P-7"] and p["images_with_id"] == 2
    assert "meta.csv" in p["source"]
    proc = run_cli("audit", str(root), "--patient-csv", str(csv), "--patient-column", "pid")
    assert proc.returncode == 2 and "no column 'pid'" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_training_puts_the_audit_warnings_first(planted, tmp_path):
    out = tmp_path / "run"
    args = ["--model", "small_cnn", "--image-size", "32", "--epochs", "1", "--no-tensorboard"]
    proc = run_cli(
        "train", "--data", str(planted["root"]), *args, "--set", "eval.tsne=false", "--out", str(out), "-q"
    )
    assert proc.returncode == 0, proc.stderr
    audit = json.loads((out / "metrics.json").read_text())["audit"]
    text = " ".join(audit["warnings"])
    assert "acquisition properties alone" in text and "exact copies" in text
    html = (out / "report.html").read_text()
    assert html.index("Data warnings") < html.index("Test metrics")
    assert "warning: Labels can be predicted" in proc.stderr


def test_audit_of_real_covid_challenge_binary(covid_dir, tmp_path):
    proc = run_cli("audit", str(covid_dir), "--classes", "covid,normal", "--out", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    a = json.loads((tmp_path / "a" / "audit.json").read_text())
    meta = a["metadata_baseline"]
    assert meta["accuracy"] > 0.9 and meta["chance"] < 0.55  # COVID and normal come from different sources
    assert any("acquisition properties alone" in w for w in a["warnings"])
    names = {(Path(p["a"]).name, Path(p["b"]).name) for p in a["duplicates"]["cross_split"]}
    assert ("E63574A7-4188-4C8D-8D17-9D67A18A1AFA.jpeg", "F4341CE7-73C9-45C6-99C8-8567A5484B63.jpeg") in names


def test_audit_of_a_medmnist_npz(pneumoniamnist_npz, tmp_path):
    proc = run_cli("audit", str(pneumoniamnist_npz), "--out", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    a = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert sum(a["counts"]["test"].values()) == 624
    assert "no acquisition metadata" in a["metadata_baseline"]["skipped"]
    assert a["image_baseline"]["accuracy"] > a["image_baseline"]["chance"]


def test_training_splits_group_patients_from_a_csv(tmp_path, covid_dir):
    # a flat class-folder layout: the tool carves train/val/test; the CSV says which files share a patient
    from cxrlab.data.index import discover

    rows = ["file,pid"]
    for cls in ("covid", "normal"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i, f in enumerate(sorted((covid_dir / "train" / cls).iterdir())[:60]):
            shutil.copy(f, tmp_path / "data" / cls / f.name)
            rows.append(f"{cls}/{f.name},{cls}-patient-{i // 4}")  # four images per patient
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    for seed in range(3):
        index = discover(
            tmp_path / "data",
            seed=seed,
            patient_csv=tmp_path / "p.csv",
            patient_column="pid",
            file_column="file",
        )
        splits: dict[str, set[str]] = {}
        for s in index.samples:
            splits.setdefault(s.group, set()).add(s.split)
        assert len(splits) == 30 and all(len(v) == 1 for v in splits.values())
        assert {s.split for s in index.samples} == {"train", "val", "test"}


def test_quick_audit_leaves_synthetic_training_images_out(tmp_path, covid_dir):
    # --extra-train images (e.g. GAN samples, here 64 px PNGs of one class) are not the data being audited:
    # they must not create a "format predicts the label" shortcut warning or count as duplicates
    from cxrlab.audit import quick_audit
    from cxrlab.config import DataConfig
    from cxrlab.data.prepare import prepare_data

    data = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("NORMAL_A", "NORMAL_B"):
            (data / split / cls).mkdir(parents=True)
    files = sorted((covid_dir / "train" / "normal").iterdir())
    for i, f in enumerate(files[:56]):
        split = "train" if i < 40 else "test"
        shutil.copy(f, data / split / ("NORMAL_A" if i % 2 else "NORMAL_B") / f.name)
    extra = tmp_path / "extra" / "NORMAL_A"
    extra.mkdir(parents=True)
    for i, f in enumerate(files[56:76]):
        Image.open(f).convert("L").resize((64, 64)).save(extra / f"synthetic_{i}.png")
    cfg = DataConfig(path=str(data), extra_train=str(tmp_path / "extra"), cache_dir=str(tmp_path / "cache"))
    prepared = prepare_data(cfg, 32, progress=False)
    audit = quick_audit(prepared)
    assert audit["synthetic_images_left_out"] == 20
    assert sum(sum(c.values()) for c in audit["counts"].values()) == 56
    assert not any("acquisition properties" in w for w in audit["warnings"])


def test_quick_audit_is_cached_per_data_and_splits(tmp_path, covid_dir):
    # a second training run on the same files and splits reads the audit back instead of recomputing it;
    # other splits (another seed) are a different key
    from cxrlab.audit import quick_audit
    from cxrlab.config import DataConfig
    from cxrlab.data.prepare import prepare_data

    cache = str(tmp_path / "cache")
    cfg = DataConfig(path=str(covid_dir), classes=["covid", "normal"], cache_dir=cache)
    prepared = prepare_data(cfg, 32, progress=False)
    first = quick_audit(prepared, cache)
    second = quick_audit(prepared, cache)
    assert "cached" not in first and second["cached"] is True
    assert second["warnings"] == first["warnings"] and second["counts"] == first["counts"]
    assert len(list((tmp_path / "cache" / "audit").glob("*.json"))) == 1
    other = prepare_data(cfg.model_copy(update={"val_fraction": 0.3}), 32, progress=False)
    assert "cached" not in quick_audit(other, cache)
    assert len(list((tmp_path / "cache" / "audit").glob("*.json"))) == 2
