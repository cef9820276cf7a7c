"""torchxrayvision's chest-X-ray networks as ``xrv/…`` models: registry, weights through torchxrayvision's
own cache (random weights written in its own file format: a pickled DenseNet module, a ResNet-50 state dict,
at the file name of its release URL), the [-1024, 1024] contract, the fast path, ``blocks:K`` fine-tuning,
zero-shot ``cxr zoo`` + ``cxr evaluate`` on real nih-1000 labels, ONNX export and the offline message."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrlab.config import ModelConfig
from cxrlab.data.prepare import to_tensor
from cxrlab.errors import ModelError
from cxrlab.models import build_model, get_spec
from cxrlab.models.split import backbone_blocks
from tests.conftest import DATA, run_cli

xrv = pytest.importorskip("torchxrayvision")
from cxrlab.models import xrv as cx  # noqa: E402 - after the skip: the extra may be missing

NIH = DATA / "nih-1000"
NAMES = [e.name for e in cx.ENTRIES]
FAST = ["-q", "--no-tensorboard", "--set", "eval.tsne=false", "--set", "eval.bootstrap=20",
        "--set", "eval.explain=off", "--set", "train.precision=32"]  # fmt: skip


def _nih_images(n: int, size: int) -> np.ndarray:
    """``n`` real nih-1000 radiographs as cxrlab decodes them: uint8 grey ``(n, size, size)``."""
    from cxrlab.data.images import load_gray

    if not (NIH / "labels.csv").is_file():
        pytest.skip("nih-1000 not available")
    files = sorted((NIH / "images").glob("*.png"))[:n]
    return np.stack([load_gray(str(f), size) for f in files])


def _calibrate(net: torch.nn.Module, images: np.ndarray) -> None:
    """Batch-norm statistics from real radiographs (cumulative), so random weights give finite, varied
    outputs on [-1024, 1024] inputs as trained ones do."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    x = torch.from_numpy(xrv.utils.normalize(images, 255))[:, None]
    net.train()
    with torch.no_grad():
        net(x)
    net.eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1


@pytest.fixture(scope="session")
def xrv_files(tmp_path_factory) -> Path:
    """A HOME whose ``~/.torchxrayvision/models_data/`` holds random weights for every xrv/… model, each in
    torchxrayvision's own format at its own file name."""
    home = tmp_path_factory.mktemp("xrv-home")
    folder = home / ".torchxrayvision" / "models_data"
    folder.mkdir(parents=True)
    small, large = _nih_images(3, 224), _nih_images(2, 512)
    for k, e in enumerate(cx.ENTRIES):
        torch.manual_seed(k)
        name = os.path.basename(xrv.models.model_urls[e.weights]["weights_url"])
        if e.arch == "densenet121":
            net = xrv.models.DenseNet(weights=None)
            _calibrate(net, small)
            torch.save(net, folder / name)  # torchxrayvision's DenseNet files are pickled modules
        else:
            import torchvision

            net = torchvision.models.resnet50(num_classes=18, weights=None)
            net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            _calibrate(net, large)
            torch.save(net.state_dict(), folder / name)  # its ResNet files are state dicts
    return home


@pytest.fixture()
def xrv_home(xrv_files, monkeypatch) -> Path:
    """torchxrayvision's cache (``$HOME/.torchxrayvision``) pointing at the random weights."""
    monkeypatch.setenv("HOME", str(xrv_files))
    monkeypatch.setenv("CXRLAB_OFFLINE", "1")  # never a download, even with a network
    return xrv_files


def _xrv_own(e: cx.XrvEntry, home: Path) -> torch.nn.Module:
    """The same weights loaded by torchxrayvision's own loader (our test file, so its pickle is trusted)."""
    folder = str(home / ".torchxrayvision" / "models_data")
    if e.arch == "densenet121":
        return xrv.models.DenseNet(weights=e.weights, cache_dir=folder)
    return xrv.models.ResNet(weights=e.weights, cache_dir=folder)


def _raw_logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchxrayvision's logits before its sigmoid and operating-point rescaling."""
    if isinstance(net, xrv.models.DenseNet):
        return net.classifier(net.features2(x))
    return net.model(x)


def test_registry_lists_every_xrv_model_as_chest_xray_pretrained(xrv_home):
    from cxrlab.models.summary import model_table

    rows = {r["model"]: r for r in model_table() if r["family"] == "xrv"}
    assert sorted(rows) == sorted(
        ["xrv/densenet121-res224-" + s for s in ("all", "nih", "pc", "chex", "rsna", "mimic_nb", "mimic_ch")]
        + ["xrv/resnet50-res512-all"]
    )
    for name, r in rows.items():
        size = 512 if "res512" in name else 224
        assert r["input"] == f"1×{size}×{size}" and r["pretrained on"] == "chest X-rays"
        assert r["needs"] == "cxrlab[xrv]" and r["pretrained"] is True and r["weights offline"] is True
        assert r["features"] == ("2048×16×16" if size == 512 else "1024×7×7")
    spec = get_spec("xrv/densenet121-res224-nih")
    assert spec.channels == 1 and spec.mean == (0.5,) and spec.std == (1 / 2048,)


def test_scaling_is_torchxrayvision_normalize():
    images = _nih_images(3, 224)
    spec = get_spec("xrv/densenet121-res224-all")
    ours = to_tensor(images, spec.channels, spec.mean, spec.std)
    theirs = torch.from_numpy(xrv.utils.normalize(images, 255))[:, None]
    assert ours.shape == theirs.shape == (3, 1, 224, 224)
    assert float((ours - theirs).abs().max()) < 1e-3
    assert float(ours.min()) >= -1024 and float(ours.max()) <= 1024


@pytest.mark.parametrize("name", NAMES)
def test_each_model_loads_its_file_and_predicts_as_torchxrayvision(name, xrv_home):
    """Construct + one forward per registry entry: the weights read with weights_only from torchxrayvision's
    own file, the zero-shot classifier's logits those of torchxrayvision's own model on the same image."""
    e = cx.entry(name)
    spec = get_spec(name)
    images = _nih_images(1, e.size)
    x = to_tensor(images, spec.channels, spec.mean, spec.std)
    zs, findings, thresholds = cx.zero_shot_model(name)
    own = _xrv_own(e, xrv_home).eval()
    labels = xrv.models.model_urls[e.weights]["labels"]
    assert findings == [f for f in labels if f] == [f for f in own.pathologies if f]
    keep = [labels.index(f) for f in findings]
    with torch.no_grad():
        fmap = zs.backbone(x)
        ours, theirs = zs.head(fmap), _raw_logits(own, x)[:, keep]
    assert tuple(fmap.shape[1:]) == ((1024, 7, 7) if e.arch == "densenet121" else (2048, 16, 16))
    assert torch.isfinite(ours).all() and float(ours.std()) > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    op = xrv.models.model_urls[e.weights]["op_threshs"]
    for f in findings:
        t = op[labels.index(f)]
        assert thresholds[f] == pytest.approx(0.5 if np.isnan(t) else t)


def test_rsna_and_nih_keep_only_their_named_outputs():
    assert [f for _, f, _ in cx.pretrained_findings("xrv/densenet121-res224-rsna")] == [
        "Pneumonia",
        "Lung Opacity",
    ]
    nih = [f for _, f, _ in cx.pretrained_findings("xrv/densenet121-res224-nih")]
    assert len(nih) == 14 and "Pleural_Thickening" in nih and "Lung Opacity" not in nih


def test_blocks_split_matches_the_backbone(xrv_home):
    for name in ("xrv/densenet121-res224-chex", "xrv/resnet50-res512-all"):
        model = build_model(ModelConfig(name=name, freeze="blocks:3"), 2)
        blocks = backbone_blocks(model)
        assert blocks is not None and len(blocks) == (13 if "densenet" in name else 8)
        trains = [any(p.requires_grad for p in b.parameters()) for b in blocks if list(b.parameters())]
        assert not any(trains[:2]) and all(trains[2:])


def test_offline_missing_file_fails_in_seconds_naming_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CXRLAB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        build_model(ModelConfig(name="xrv/densenet121-res224-mimic_nb", pretrained=True), 2)
    msg = str(info.value)
    assert time.monotonic() - start < 10 and "\n" not in msg
    name = "mimic_nb-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
    assert f"pretrained weights {name} are not in {tmp_path}/.torchxrayvision/models_data" in msg
    assert "cannot be reached" in msg and "without --pretrained" in msg
    assert not (tmp_path / ".torchxrayvision" / "models_data" / name).exists()


def test_a_foreign_pickle_is_refused_by_weights_only_loading(tmp_path, monkeypatch):
    folder = tmp_path / ".torchxrayvision" / "models_data"
    folder.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    name = os.path.basename(cx.weights_url("xrv/densenet121-res224-pc"))
    torch.save({"state": Path("/etc/passwd")}, folder / name)  # a global outside torch / torchxrayvision
    with pytest.raises(ModelError, match="weights_only loading") as info:
        build_model(ModelConfig(name="xrv/densenet121-res224-pc", pretrained=True), 2)
    assert "\n" not in str(info.value) and name in str(info.value)


def _nih_subset(root: Path, per_split: dict[str, int]) -> tuple[Path, Path]:
    """A copy of nih-1000 with one image of each of the first patients of each split (real images, official
    label rows)."""
    images = root / "images"
    images.mkdir(parents=True)
    with (NIH / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    kept = []
    for split, n in per_split.items():
        first = {}
        for r in rows:
            if r["split"] == split:
                first.setdefault(r["Patient ID"], r)
        kept += list(first.values())[:n]
    for r in kept:
        shutil.copy(NIH / "images" / r["Image Index"], images / r["Image Index"])
    labels = root / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return images, labels


@pytest.fixture(scope="module")
def nih_small(tmp_path_factory) -> tuple[Path, Path]:
    if not (NIH / "labels.csv").is_file():
        pytest.skip("nih-1000 not available")
    return _nih_subset(tmp_path_factory.mktemp("nih-small"), {"train": 8, "valid": 6, "test": 6})


def _labels_args(images: Path, labels: Path) -> list[str]:
    return ["--data", str(images), "--labels", str(labels), "--labels-format", "nih"]


def test_fast_path_then_blocks_fine_tuning_then_onnx_export(xrv_home, nih_small, tmp_path):
    """Frozen xrv DenseNet on the fast path, then --freeze blocks:10 (cached activations), both on real
    nih-1000 images; the run records the contract and its ONNX export carries it with parity."""
    images, labels = nih_small
    name = "xrv/densenet121-res224-nih"
    fast = tmp_path / "fast"
    proc = run_cli("train", *_labels_args(images, labels), "--model", name, "--pretrained", "--freeze",
                   "backbone", "--epochs", "1", "--out", str(fast), *FAST)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((fast / "metrics.json").read_text())
    assert metrics["fast_path"] and metrics["multilabel"]
    meta = json.loads((fast / "model.json").read_text())
    assert (meta["image_size"], meta["channels"], meta["mean"], meta["std"]) == (224, 1, [0.5], [1 / 2048])
    tuned = tmp_path / "tuned"
    proc = run_cli("train", *_labels_args(images, labels), "--model", name, "--pretrained", "--freeze",
                   "blocks:10", "--epochs", "1", "--out", str(tuned), *FAST)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tuned / "metrics.json").read_text())
    assert "blocks" in json.dumps(m.get("training_path", "")) and not m["fast_path"]
    before = build_model(ModelConfig(name=name, pretrained=True), 14).state_dict()
    from cxrlab.runs import load_state

    after = load_state(tuned)
    stem = "backbone.0.denseblock1.denselayer1.conv1.weight"
    last = "backbone.0.denseblock4.denselayer16.conv2.weight"
    assert torch.equal(after[stem], before[stem])  # a frozen block: torchxrayvision's weights as loaded
    assert not torch.equal(after[last], before[last])  # the suffix trained
    pytest.importorskip("onnxruntime")
    onnx_file = tmp_path / "model.onnx"
    proc = run_cli("export", str(fast), "--format", "onnx", "--out", str(onnx_file))
    assert proc.returncode == 0, proc.stderr
    from cxrlab.deploy.export import read_metadata

    info = read_metadata(onnx_file)
    assert info["task"] == "multilabel" and info["model"] == name
    assert (info["input"]["image_size"], info["input"]["channels"]) == (224, 1)
    assert info["input"]["mean"] == [0.5] and info["input"]["std"] == [1 / 2048]
    assert "[-1024, 1024]" in info["input"]["normalisation"]
    assert set(info["thresholds"]) == set(meta["findings"])


def test_zero_shot_run_evaluates_nih_labels_with_mapped_and_unmatched_findings(xrv_home, nih_small, tmp_path):
    images, labels = nih_small
    run = tmp_path / "xrv-all"
    proc = run_cli("zoo", "xrv/densenet121-res224-all", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((run / "model.json").read_text())
    assert (
        len(meta["findings"]) == 18
        and meta["zero_shot"]
        and meta["pretrained"]["source"] == "torchxrayvision"
        and meta["thresholds"]["Effusion"] < 0.5  # torchxrayvision's operating point, not 0.5
    )
    assert (meta["channels"], meta["mean"], meta["std"], meta["image_size"]) == (1, [0.5], [1 / 2048], 224)
    alone = run_cli("evaluate", str(run))  # no data of its own: one line saying what to give
    assert alone.returncode != 0 and "no test split of its own" in alone.stderr and "--data" in alone.stderr
    out = tmp_path / "eval"
    proc = run_cli("evaluate", str(run), *_labels_args(images, labels), "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "metrics.json").read_text())
    per = result["test"]["per_finding"]
    assert "Pleural_Thickening" in per and "Effusion" in per and "No Finding" not in per
    unmatched = [line for line in proc.stdout.splitlines() if line.startswith("note: only in the model")]
    assert len(unmatched) == 1
    for f in ("Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"):
        assert f in unmatched[0]
    # the probabilities are the zero-shot model's own on the same images (sigmoid of its logits)
    zs, findings, _ = cx.zero_shot_model("xrv/densenet121-res224-all")
    with (out / "predictions.csv").open() as fh:
        row = next(csv.DictReader(fh))
    from cxrlab.data.images import load_gray

    x = to_tensor(load_gray(row["path"], 224)[None], 1, (0.5,), (1 / 2048,))
    with torch.no_grad():
        p = torch.sigmoid(zs(x))[0]
    got = {k[2:]: float(v) for k, v in row.items() if k.startswith("p_")}
    assert got and all(abs(got[f] - float(p[findings.index(f)])) < 1e-4 for f in got)


def test_zoo_refuses_a_model_without_its_own_classifier(tmp_path):
    proc = run_cli("zoo", "mobilenet_v2", "--out", str(tmp_path / "r"))
    assert proc.returncode != 0 and "no pretrained classifier of its own" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_without_the_extra_a_model_fails_in_one_line_naming_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchxrayvision", None)  # as if the [xrv] extra were not installed
    from cxrlab.models.summary import model_table

    with pytest.raises(ModelError) as info:
        build_model(ModelConfig(name="xrv/densenet121-res224-nih"), 2)
    assert "pip install 'cxrlab[xrv]'" in str(info.value) and "\n" not in str(info.value)
    rows = {r["model"]: r for r in model_table()}
    assert rows["xrv/resnet50-res512-all"]["weights offline"] is None
    assert rows["xrv/resnet50-res512-all"]["needs"] == "cxrlab[xrv]"


def test_train_offline_without_the_file_stops_before_decoding_any_image(nih_small, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    images, labels = nih_small
    start = time.monotonic()
    args = ["--model", "xrv/resnet50-res512-all", "--pretrained", "--out", str(tmp_path / "run"), "-q"]
    proc = run_cli("train", *_labels_args(images, labels), *args, env={"CXRLAB_OFFLINE": "1"})
    assert proc.returncode != 0 and time.monotonic() - start < 60  # imports included, on a loaded CPU
    name = "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt"
    error = [line for line in proc.stderr.splitlines() if name in line]
    assert len(error) == 1 and f"{tmp_path}/home/.torchxrayvision/models_data" in error[0]
    assert "decoding" not in proc.stderr and not (tmp_path / "run" / "splits.csv").exists()
