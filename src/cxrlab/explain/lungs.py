"""Lung fields: train the tiny U-Net on covid-ieee (``cxr lungs train``), load the shipped one, and turn
its output (or a user's mask file) into a mask aligned with a classifier's input.

The shipped segmenter is ``assets/lungs.safetensors`` with its data card ``assets/lungs.json``.
"""

from __future__ import annotations

import csv
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cxrlab.data.images import ImageReadError, is_image_file, load_gray, resize_square
from cxrlab.errors import CxrError, DataError, ModelError
from cxrlab.explain.cam import upsample
from cxrlab.explain.unet import TinyUNet

ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED = ASSETS / "lungs.safetensors"
MEAN, STD = 0.5, 0.25
OUT_ENTRIES = ("lungs.safetensors", "lungs.json", "heldout_dice.csv")


@dataclass
class Pair:
    """One image/mask pair of a covid-ieee style folder."""

    image: Path
    mask: Path
    patient: str
    view: str = ""


def read_pairs(data: str | Path) -> list[Pair]:
    """The image/mask pairs listed in ``data/labels.csv`` (``patientid``, ``filename``; masks in ``masks/``
    with the image's name); one line naming what is missing otherwise."""
    root = Path(data)
    table = root / "labels.csv"
    if not (root / "images").is_dir() or not (root / "masks").is_dir() or not table.is_file():
        raise DataError(
            f"{data} is not a lung-mask folder: it needs images/, masks/ (same file names) and labels.csv "
            "with patientid and filename columns (like ../shared/data/covid-ieee)"
        )
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"patientid", "filename"} <= set(rows[0]):
        raise DataError(f"{table} needs the columns patientid and filename")
    pairs = []
    for row in rows:
        image, mask = root / "images" / row["filename"], root / "masks" / row["filename"]
        if image.is_file() and mask.is_file():
            pairs.append(Pair(image, mask, str(row["patientid"]), str(row.get("view") or "")))
    if len(pairs) < 10:
        raise DataError(f"{data}: only {len(pairs)} image/mask pairs found; at least 10 are needed")
    return pairs


def patient_split(pairs: list[Pair], heldout: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of training and held-out pairs; whole patients are held out (about ``heldout`` of them)."""
    patients = sorted({p.patient for p in pairs})
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    held = set(patients[: max(1, int(round(heldout * len(patients))))])
    train = [i for i, p in enumerate(pairs) if p.patient not in held]
    test = [i for i, p in enumerate(pairs) if p.patient in held]
    return train, test


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    inter = float(np.logical_and(pred, true).sum())
    total = float(pred.sum() + true.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def dice_by_view(views: list[str], scores: list[float]) -> dict[str, Any]:
    """Mean Dice of frontal (PA/AP) and lateral (view ``L``) images, with their counts."""
    lateral = [d for v, d in zip(views, scores, strict=True) if v.strip().upper() == "L"]
    frontal = [d for v, d in zip(views, scores, strict=True) if v.strip().upper() != "L"]
    return {
        "frontal_mean": round(float(np.mean(frontal)), 4) if frontal else None,
        "frontal_n": len(frontal),
        "lateral_mean": round(float(np.mean(lateral)), 4) if lateral else None,
        "lateral_n": len(lateral),
    }


def _load_pairs(pairs: list[Pair], size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([load_gray(p.image, size) for p in pairs])
    masks = np.stack([load_gray(p.mask, size) > 127 for p in pairs])
    return images, masks


def _to_input(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).float().div(255.0).unsqueeze(1) - MEAN) / STD


def _augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random affine (±10°, scale 0.9–1.1, shift ±6%, half flipped) for images and masks, and a
    gamma/contrast jitter for the images."""
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle, scale = u(-0.175, 0.175), u(0.9, 1.1)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, u(-0.06, 0.06)], 1),
            torch.stack([sin * flip, cos, u(-0.06, 0.06)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    raw = x * STD + MEAN  # back to [0, 1] for the intensity jitter
    raw = raw.clamp(0, 1) ** u(0.7, 1.4).view(-1, 1, 1, 1)
    raw = (raw - 0.5) * u(0.8, 1.2).view(-1, 1, 1, 1) + 0.5
    x = F.grid_sample((raw - MEAN) / STD, grid, align_corners=False, padding_mode="border")
    y = F.grid_sample(y, grid, align_corners=False)
    return x, y


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    soft_dice = 1 - (2 * (p * y).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, y) + soft_dice.mean()


def train_lungs(
    data: str | Path,
    out: str | Path,
    size: int = 128,
    epochs: int = 40,
    base: int = 8,
    heldout: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
    log=print,
) -> dict[str, Any]:
    """Train :class:`TinyUNet` on a patient-grouped split of ``data``; write ``lungs.safetensors`` and the
    data card ``lungs.json`` (with the held-out patients' Dice) to ``out``. Returns the card."""
    from safetensors.torch import save_file

    from cxrlab.runs import check_out_path, claim_folder, write_csv, write_json

    if size % 8 or not 32 <= size <= 512:
        raise CxrError(f"--size {size}: give a multiple of 8 between 32 and 512 (128 is the default)")
    if not 1 <= epochs <= 100_000:
        raise CxrError(f"--epochs {epochs}: give a number of epochs from 1 to 100,000")
    if not 1 <= base <= 256:
        raise CxrError(f"--width {base}: give a U-Net base width from 1 to 256 (8 is the default)")
    if not 0 <= seed < 2**32:
        raise CxrError(f"--seed {seed}: give a seed from 0 to 2**32 - 1")
    pairs = read_pairs(data)
    out = check_out_path(out)
    lock = claim_folder(
        out, "lungs", OUT_ENTRIES, "a lung-segmenter folder", overwrite,
        f"{out} is not empty; choose a new --out or add --overwrite", protect=(data,),
    )  # fmt: skip
    try:
        started = time.time()
        train_idx, test_idx = patient_split(pairs, heldout, seed)
        log(f"decoding {len(pairs)} image/mask pairs at {size} px ...")
        images, masks = _load_pairs(pairs, size)
        x_all, y_all = _to_input(images), torch.from_numpy(masks).float().unsqueeze(1)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        net = TinyUNet(base)
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
        steps = epochs * ((len(train_idx) + 15) // 16)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        tr = torch.tensor(train_idx)
        for epoch in range(epochs):
            net.train()
            order = tr[torch.randperm(len(tr), generator=gen)]
            total = 0.0
            for start in range(0, len(order), 16):
                b = order[start : start + 16]
                xb, yb = _augment(x_all[b], y_all[b], gen)
                loss = _loss(net(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(b)
            if epoch == epochs - 1 or (epoch + 1) % 5 == 0:
                log(f"epoch {epoch + 1}/{epochs}: loss {total / len(tr):.4f} ({time.time() - started:.0f} s)")
        net.eval()
        seg = Segmenter(net, size)
        probs = seg.predict(images[test_idx])
        scores = [dice(p > 0.5, m) for p, m in zip(probs, masks[test_idx], strict=True)]
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "lungs.safetensors"))
        rows = [
            {"image": pairs[i].image.name, "patient": pairs[i].patient, "dice": round(s, 4)}
            for i, s in zip(test_idx, scores, strict=True)
        ]
        write_csv(out / "heldout_dice.csv", rows, ["image", "patient", "dice"])
        card = _card(
            data, pairs, train_idx, test_idx, scores, size, base, epochs, seed, net, time.time() - started
        )
        write_json(out / "lungs.json", card)
        return card
    finally:
        lock.release()


def _licences(data: str | Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with open(Path(data) / "labels.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            key = (row.get("license") or "").strip() or "(none stated)"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _card(data, pairs, train_idx, test_idx, scores, size, base, epochs, seed, net, seconds) -> dict[str, Any]:
    from cxrlab._version import __version__

    s = np.asarray(scores)
    held_patients = sorted({pairs[i].patient for i in test_idx}, key=lambda p: (len(p), p))
    return {
        "model": "TinyUNet",
        "base_width": base,
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "input": {
            "size": size,
            "resize": "squash",
            "channels": 1,
            "normalisation": f"(x / 255 - {MEAN}) / {STD}",
            "threshold": 0.5,
        },
        "training_data": {
            "folder": Path(data).name,
            "pairs": len(pairs),
            "patients": len({p.patient for p in pairs}),
            "train_images": len(train_idx),
            "heldout_images": len(test_idx),
            "heldout_patients": held_patients,
            "split": f"patients (labels.csv patientid), about 20% held out, numpy seed {seed}",
            "source": "ieee8023 COVID-19 image data collection (Cohen et al. 2020), June-2020 fork "
            "s-mostafa-a/covid-chestxray-dataset; lung masks by v7labs as shipped in mlmed/torchxrayvision "
            "(semantic_masks_v7labs_lungs.zip)",
            "views": "PA, AP, AP supine and lateral; adult COVID-19 radiographs, many web and paper figures",
        },
        "licence": {
            "images": "per image, as labels.csv states (counts below); many are non-commercial (NC) and "
            "137 state no licence: these weights are derived from them, check before any commercial use",
            "image_licence_counts": _licences(data),
            "masks": "v7labs lung annotations as redistributed by mlmed/torchxrayvision; see their terms",
        },
        "dice_heldout": {
            **dice_by_view([pairs[i].view for i in test_idx], scores),
            "mean": round(float(s.mean()), 4),
            "median": round(float(np.median(s)), 4),
            "p05": round(float(np.percentile(s, 5)), 4),
            "min": round(float(s.min()), 4),
            "n_images": len(s),
            "n_patients": len(held_patients),
            "measured_at": f"{size} px, squashed, mask threshold 0.5",
        },
        "training": {
            "epochs": epochs,
            "batch_size": 16,
            "optimizer": "AdamW one-cycle, max lr 3e-3",
            "augmentation": "affine ±10°, scale 0.9-1.1, shift ±6%, horizontal flip, gamma/contrast",
            "seconds": round(seconds, 1),
            "seed": seed,
        },
        "cxrlab_version": __version__,
        "created": time.strftime("%Y-%m-%d"),
    }


class Segmenter:
    """A loaded lung segmenter: :meth:`predict` gives lung probabilities at its own input size;
    :meth:`predict_cached` the same, kept in cxrlab's cache."""

    #: Images per forward pass.
    BATCH = 32

    def __init__(self, net: TinyUNet, size: int, card: dict[str, Any] | None = None):
        self.net = net.eval()
        self.size = size
        self.card = card or {}
        #: images whose lung probabilities :meth:`predict_cached` read from the cache / computed
        self.cache_hits = self.cache_misses = 0
        self._ident: str | None = None

    @classmethod
    def load(cls, weights: str | Path | None = None) -> Segmenter:
        """The shipped segmenter, or ``weights`` (a ``lungs.safetensors`` written by ``cxr lungs train``,
        its ``lungs.json`` beside it)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from cxrlab.runs import read_json

        path = Path(weights) if weights else SHIPPED
        card_path = path.with_name("lungs.json")
        if not path.is_file() or not card_path.is_file():
            raise ModelError(
                f"no lung segmenter at {path} (with lungs.json beside it); train one with "
                "`cxr lungs train --data ../shared/data/covid-ieee --out DIR`"
            )
        card = read_json(card_path)
        try:
            state = load_file(str(path))
            net = TinyUNet(int(card.get("base_width", 8)))
            net.load_state_dict(state)
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise ModelError(f"{path} is not a lung segmenter this cxrlab can load ({exc})") from None
        return cls(net, int(card["input"]["size"]), card)

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Lung probabilities ``(N, S, S)`` for uint8 grey images ``(N, S, S)`` at :attr:`size`."""
        out = []
        for start in range(0, len(images), self.BATCH):
            out.append(torch.sigmoid(self.net(_to_input(images[start : start + self.BATCH])))[:, 0].numpy())
        return np.concatenate(out) if out else np.zeros((0, self.size, self.size), np.float32)

    def predict_cached(self, images: np.ndarray, cache: str | Path | None) -> np.ndarray:
        """:meth:`predict`, each image's result kept in the cache folder ``cache`` (``ImageCache.root``;
        None: none) under ``CACHE/lungs/ab/<sha1>.npy``, the key hashing the segmenter's weights, its input
        size and the image's pixels: an image seen before is not segmented again, and the probabilities
        read back are the ones computed (float32, bit for bit). Counts in :attr:`cache_hits` /
        :attr:`cache_misses`; a cache that cannot be written is skipped (one warning)."""
        from cxrlab.data.cache import load_npy, save_npy

        images = np.asarray(images)
        if cache is None:
            self.cache_misses += len(images)
            return self.predict(images)
        paths = [self._entry_path(Path(cache), image) for image in images]
        image_shape = images.shape[1:]
        found: dict[int, np.ndarray] = {}
        for i, path in enumerate(paths):
            hit = load_npy(path)
            if hit is not None and hit.dtype == np.float32 and hit.shape == image_shape:
                found[i] = hit
        missing = [i for i in range(len(images)) if i not in found]
        writable = True
        for i, prob in zip(missing, self.predict(images[missing]) if missing else [], strict=True):
            found[i] = prob
            writable = writable and save_npy(paths[i], np.ascontiguousarray(prob))
        self.cache_hits += len(images) - len(missing)
        self.cache_misses += len(missing)
        if not len(images):
            return np.zeros((0, self.size, self.size), np.float32)
        return np.stack([found[i] for i in range(len(images))])

    def _entry_path(self, cache: Path, image: np.ndarray) -> Path:
        if self._ident is None:
            h = hashlib.sha1(f"lungs-v1|{self.size}|torch={torch.__version__}".encode())
            for name, t in self.net.state_dict().items():
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            self._ident = h.hexdigest()
        key = hashlib.sha1(self._ident.encode())
        key.update(f"|{image.dtype}|{image.shape}|".encode())
        key.update(np.ascontiguousarray(image).tobytes())
        digest = key.hexdigest()
        return cache / "lungs" / digest[:2] / f"{digest}.npy"

    def mask_for(self, path: str | Path, size: int, resize: str = "squash") -> np.ndarray:
        """The lung mask of image ``path`` in a classifier's input geometry (``size``, ``resize``)."""
        prob = self.predict(load_gray(path, self.size)[None])[0]
        if resize == "squash":
            return upsample(prob, size) > 0.5
        w, h = _original_size(path)
        full = Image.fromarray(upsample(prob, (h, w)) > 0.5)
        return resize_square(full.convert("L"), size, resize) > 127

    def mask_for_array(self, gray: np.ndarray, size: int) -> np.ndarray:
        """The lung mask ``(size, size)`` of an image already decoded to a square in the classifier's
        geometry (``gray``, uint8, any side): the segmenter sees it resized to :attr:`size`."""
        return upsample(self.predict(square_gray(gray, self.size)[None])[0], size) > 0.5


def square_gray(gray: np.ndarray, side: int) -> np.ndarray:
    """A square uint8 grey image resized (bilinear) to ``side`` × ``side``; as it is when it already is."""
    if gray.shape[0] == side and gray.shape[1] == side:
        return gray
    return np.asarray(Image.fromarray(gray).resize((side, side), Image.BILINEAR))


def _original_size(path: str | Path) -> tuple[int, int]:
    from cxrlab.data.images import read_info

    info = read_info(path)
    return int(info.width), int(info.height)


def find_user_mask(masks: Path, image: str | Path) -> Path | None:
    """The file in ``masks`` with the image's stem (any image extension), or None."""
    stem = Path(image).stem
    for candidate in sorted(masks.glob(f"{stem}.*")):
        if candidate.is_file() and is_image_file(candidate):
            return candidate
    return None


def user_mask(path: Path, size: int, resize: str = "squash") -> np.ndarray:
    """A user's mask file (lungs bright, background dark) in a classifier's input geometry."""
    try:
        return load_gray(path, size, resize) > 127
    except (ImageReadError, OSError) as exc:
        raise DataError(f"mask {path}: {exc}") from None
