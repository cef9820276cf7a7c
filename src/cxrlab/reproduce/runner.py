"""Run a report's experiments in order and collect cxrlab's value for every number the report prints.

Each experiment writes ordinary cxrlab folders under ``OUT/<report>/<experiment>/`` (run folders, a sweep
folder, an autoencoder or GAN folder), so every result can be opened, evaluated or compared on its own.
An experiment that finished with the same plan is reused when the command runs again (an interrupted
reproduction resumes where it stopped); one that fails is recorded with its reason and the others go on.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.config import RunConfig
from cxrlab.errors import ConfigError, CxrError, DataError
from cxrlab.metrics import read_metrics
from cxrlab.reproduce.catalog import Experiment, Report, load_recipe
from cxrlab.runs import read_csv, read_status
from cxrlab.stats import percentile_ci, to_number

BUDGETS = ("quick", "full")


def plan_config(
    exp: Experiment, recipe: str, data_root: Path, budget: str, seed: int
) -> tuple[RunConfig, list[str]]:
    """The recipe as this experiment runs it: data path, budget changes, offline weights; and the notes."""
    cfg = load_recipe(recipe)
    notes = []
    sets = {"data.path": str(data_root / exp.data), "train.seed": seed}
    if budget == "quick":
        sets.update(
            {k: v for k, v in exp.quick_set.items() if k.split(".")[0] in ("data", "model", "train", "eval")}
        )
        if exp.quick_note:
            notes.append(f"quick budget: {exp.quick_note}")
    cfg = cfg.override([f"{k}={json.dumps(v)}" for k, v in sets.items()])
    weights = weights_note(cfg)
    if weights:
        cfg = cfg.override(["model.pretrained=false"])
        notes.append(weights)
    return cfg, notes


def weights_note(cfg: RunConfig) -> str | None:
    """When a recipe asks for ImageNet weights that cannot be had here: why its row is not comparable."""
    if not cfg.model.pretrained:
        return None
    from cxrlab.models import get_spec, load_torchvision_weights
    from cxrlab.models.timm_models import ensure_timm_weights

    spec = get_spec(cfg.model.name)
    try:
        if spec.family == "timm":
            ensure_timm_weights(spec.name)
        elif spec.weights:
            load_torchvision_weights(spec.weights)
        else:
            return None
    except CxrError:
        return (
            f"RANDOM WEIGHTS: the ImageNet weights of {cfg.model.name} are not on this machine and cannot be "
            "downloaded, so it trained from random initialisation — not comparable with the report"
        )
    return None


def fingerprint(*parts: Any) -> str:
    """A short hash of what an experiment will do (reused only when it is unchanged)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished(folder: Path) -> bool:
    return (
        folder.is_dir()
        and (folder / "metrics.json").is_file()
        and read_status(folder).get("status") == "finished"
    )


def run_values(run: Path, framework: str) -> dict[str, Any]:
    """cxrlab's value (and 95% CI where there is one) for each metric a report prints, from a run."""
    m = read_metrics(run / "metrics.json")
    # the reports print argmax accuracy (Keras' convention): a binary run's sits under test.argmax
    test, timing, params = m.get("test", {}), m.get("timing", {}), m.get("params", {})
    argmax = {**test, **(test.get("argmax") or {})}
    counts = params.get("keras", params) if framework == "keras" else params
    history = read_csv(run / "history.csv") if (run / "history.csv").is_file() else []
    last = history[-1] if history else {}
    fast = bool(m.get("fast_path"))
    train_s = (timing.get("train_s") or 0) + (timing.get("features_s") or 0 if fast else 0)
    values: dict[str, Any] = {
        "test_accuracy": (argmax.get("accuracy"), argmax.get("accuracy_ci95")),
        "test_loss": (test.get("loss"), None),
        "val_accuracy": (((m.get("val") or {}).get("argmax") or m.get("val") or {}).get("accuracy"), None),
        "train_accuracy": (to_number(last.get("train_acc")), None),
        "params_total": (counts.get("total"), None),
        "params_trainable": (counts.get("trainable"), None),
        "params_non_trainable": (counts.get("non_trainable"), None),
        "train_time_s": (round(train_s, 1), None),
        "s_per_epoch": (timing.get("s_per_epoch"), None),
        "s_per_step": (timing.get("s_per_step"), None),
        "gpu_train_time_s": (
            round(train_s, 1) if str(m.get("device", "")).startswith("cuda") else None,
            None,
        ),
    }
    values.update(weighted_prf(run / "predictions.csv", m.get("classes", []), seed=0))
    return {
        "values": values,
        "fast_path": fast,
        "features_s": timing.get("features_s"),
        "epochs": timing.get("epochs"),
        "total_s": timing.get("total_s"),
        "n_test": test.get("n"),
        "device": m.get("device"),
        "plots": {k: str(run / v) for k, v in (m.get("plots") or {}).items()},
    }


def weighted_prf(predictions: Path, classes: list[str], seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Weighted precision, recall and F1 at argmax (the reports' convention) with bootstrap 95% CIs."""
    from sklearn.metrics import precision_recall_fscore_support

    if not predictions.is_file() or not classes:
        return {}
    rows = read_csv(predictions)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[r["true"]] for r in rows])
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    pred = probs.argmax(1)
    labels = list(range(len(classes)))

    def prf(idx: np.ndarray) -> tuple[float, float, float]:
        p, r, f, _ = precision_recall_fscore_support(
            y[idx], pred[idx], labels=labels, average="weighted", zero_division=0
        )
        return float(p), float(r), float(f)

    point = prf(np.arange(len(y)))
    rng = np.random.default_rng(seed)
    boots = np.array([prf(rng.integers(0, len(y), len(y))) for _ in range(n_boot)])
    return {
        name: (point[i], percentile_ci(boots[:, i])) for i, name in enumerate(("precision", "recall", "f1"))
    }


class ExperimentInterrupted(Exception):
    """Ctrl-C or SIGTERM while an experiment ran: ``result`` is its record (status "interrupted"),
    ``cause`` what stopped it. `cxr reproduce` stops there (:func:`cxrlab.reproduce.reproduce`)."""

    def __init__(self, result: dict[str, Any], cause: BaseException):
        super().__init__(result["key"])
        self.result, self.cause = result, cause


def _interruptions() -> tuple[type[BaseException], ...]:
    """What a signal turns into below an experiment: KeyboardInterrupt (SIGTERM too, as
    :class:`cxrlab.pipeline.train.Terminated`), or the one-line errors of an interrupted training run or
    autoencoder (the folder is kept, the status says interrupted)."""
    from cxrlab.generative.autoencoder import Interrupted
    from cxrlab.training.train import TrainingInterrupted

    return KeyboardInterrupt, TrainingInterrupted, Interrupted


class Runner:
    """Runs experiments into ``out`` with the given data root and budget."""

    def __init__(
        self,
        data_root: Path,
        out: Path,
        budget: str,
        seed: int = 0,
        progress: bool = True,
        previous: dict[str, Any] | None = None,
    ):
        if budget not in BUDGETS:
            raise ConfigError(f"--budget {budget!r}: give quick or full")
        self.data_root, self.out, self.budget, self.seed, self.progress = (
            data_root,
            out,
            budget,
            seed,
            progress,
        )
        self.previous = previous or {}

    def say(self, text: str) -> None:
        if self.progress:
            print(text, flush=True)

    def run(self, report: Report, exp: Experiment) -> dict[str, Any]:
        """One experiment → its result (values per recipe, notes, folders, wall time, status)."""
        t0 = time.perf_counter()
        folder = self.out / report.id / exp.id
        result: dict[str, Any] = {
            "key": exp.key,
            "id": exp.id,
            "kind": exp.kind,
            "title": exp.title,
            "folder": str(folder.relative_to(self.out)),
            "notes": [],
        }
        try:
            handler = {
                "train": self._train,
                "sweep": self._sweep,
                "autoencoder": self._autoencoder,
                "gan": self._gan,
            }[exp.kind]
            result.update(handler(report, exp, folder))
            result["status"] = "finished"
        except _interruptions() as exc:  # Ctrl-C / SIGTERM: this experiment is interrupted, and the rest
            result["status"] = "interrupted"
            result["notes"].append("interrupted (Ctrl-C or SIGTERM); running the same command again runs it")
            result["wall_s"] = round(time.perf_counter() - t0, 1)
            raise ExperimentInterrupted(result, exc) from None
        except CxrError as exc:
            result.update(status="failed", error=str(exc))
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        return result

    def _reuse(self, exp: Experiment, plan: str, folder: Path) -> bool:
        before = self.previous.get(exp.key, {})
        return before.get("plan") == plan and before.get("status") == "finished" and folder.is_dir()

    def _train_one(self, cfg: RunConfig, run: Path) -> None:
        from cxrlab.pipeline.train import train

        if (
            finished(run)
            and (run / "config.yaml").is_file()
            and _same(RunConfig.load(run / "config.yaml"), cfg)
        ):
            self.say(f"  reusing {run}")
            return
        self.say(f"  training {run} ({cfg.model.name}, {cfg.train.epochs} epochs)")
        train(cfg, run, overwrite=run.exists(), progress=self.progress)

    def _train(self, report: Report, exp: Experiment, folder: Path) -> dict[str, Any]:
        cfg, notes = plan_config(exp, exp.recipe, self.data_root, self.budget, self.seed)
        self._train_one(cfg, folder)
        values = run_values(folder, report.framework)
        if values["fast_path"]:
            notes.append(
                f"fast path: the frozen backbone's features were computed once or read from the cache "
                f"({values['features_s']} s, in the training time); seconds per epoch and per step are "
                "the head's"
            )
        return {
            "recipe": exp.recipe,
            "notes": notes,
            "runs": {exp.recipe: values},
            "random_weights": any(n.startswith("RANDOM") for n in notes),
        }

    def _sweep(self, report: Report, exp: Experiment, folder: Path) -> dict[str, Any]:
        from cxrlab.experiments.sweep import load_sweep_summary, run_sweep

        cfg, notes = plan_config(exp, exp.recipe, self.data_root, self.budget, self.seed)
        plan = fingerprint(cfg.model_dump(mode="json"), exp.params)
        if not self._reuse(exp, plan, folder):
            self.say(f"  sweeping {folder} ({'; '.join(exp.params)})")
            run_sweep(cfg, exp.params, folder, prune=False, progress=self.progress)
        summary = load_sweep_summary(folder)
        plots = (
            {p.stem: str(p) for p in sorted((folder / "plots").glob("*.png"))}
            if (folder / "plots").is_dir()
            else {}
        )
        return {
            "recipe": exp.recipe,
            "notes": notes,
            "plan": plan,
            "sweep": _sweep_rows(folder),
            "best": summary.get("best"),
            "plots": plots,
            "random_weights": any(n.startswith("RANDOM") for n in notes),
        }

    def _autoencoder(self, report: Report, exp: Experiment, folder: Path) -> dict[str, Any]:
        from cxrlab.generative.autoencoder import encode_dataset, train_autoencoder

        ae = dict(exp.settings.get("autoencoder", {}))
        clf = dict(exp.settings.get("classifier", {}))
        cap = None
        notes = []
        if self.budget == "quick":
            for key, value in exp.quick_set.items():
                section, _, name = key.partition(".")
                if section == "autoencoder":
                    ae[name] = value
                elif section == "classifier":
                    clf[name] = value
                elif key == "max_per_class":
                    cap = value
            notes.append(f"quick budget: {exp.quick_note}")
        data = str(self.data_root / exp.data)
        plan = fingerprint(ae, clf, cap, data, self.seed)
        ae_dir, codes_dir, run = folder / "autoencoder", folder / "codes", folder / "classifier"
        if not self._reuse(exp, plan, folder):
            self.say(f"  autoencoder {ae_dir} ({ae['epochs']} epochs)")
            train_autoencoder(
                data,
                ae_dir,
                image_size=ae["image_size"],
                latent_channels=ae["latent_channels"],
                depth=ae["depth"],
                epochs=ae["epochs"],
                batch_size=ae["batch_size"],
                lr=ae["lr"],
                seed=self.seed,
                max_per_class=cap,
                overwrite=True,
                progress=self.progress,
            )
            self.say(f"  encoding {codes_dir}")
            encode_dataset(ae_dir, codes_dir, overwrite=True, progress=self.progress)
        cfg = RunConfig().override(
            [
                f"data.path={json.dumps(str(codes_dir))}",
                f"model.name={clf['model']}",
                f"train.epochs={clf['epochs']}",
                f"train.batch_size={clf['batch_size']}",
                f"train.lr={clf['lr']}",
                f"train.seed={self.seed}",
                "train.early_stopping=null",
            ]
        )
        cfg.task = "Report 004 · autoencoder codes (256 × 14 × 14) → CNN, NORMAL vs PNEUMONIA"
        self._train_one(cfg, run)
        values = run_values(run, report.framework)
        notes.append(
            "the CNN on the codes is cxrlab's code_cnn (report 004 adjusts its 'Adv_CNN' without "
            "printing it); training time is the CNN's alone, as in the report"
        )
        figures = {name: str(ae_dir / f"{name}.png") for name in ("loss", "reconstructions")}
        return {
            "notes": notes,
            "plan": plan,
            "runs": {"code_cnn": values},
            "plots": figures,
            "random_weights": False,
        }

    def _gan(self, report: Report, exp: Experiment, folder: Path) -> dict[str, Any]:
        from cxrlab.generative.gan import sample_gan, train_gan

        gan = dict(exp.settings.get("gan", {}))
        notes = []
        if self.budget == "quick":
            gan.update({k.split(".", 1)[1]: v for k, v in exp.quick_set.items() if k.startswith("gan.")})
            notes.append(f"quick budget: {exp.quick_note}")
        data_dir = self.data_root / exp.data
        base_cfg, _ = plan_config(exp, exp.recipes[0], self.data_root, self.budget, self.seed)
        classes = base_cfg.data.classes or sorted(
            p.name for p in (data_dir / "train").iterdir() if p.is_dir()
        )
        cap = base_cfg.data.max_per_class
        plan = fingerprint(gan, cap, str(data_dir), self.seed)
        synth = folder / "synthetic"
        if not self._reuse(exp, plan, folder):
            for name in classes:
                self.say(f"  DCGAN for {name} ({gan['epochs']} epochs)")
                train_gan(
                    str(data_dir),
                    name,
                    folder / f"gan_{name}",
                    epochs=gan["epochs"],
                    image_size=gan["image_size"],
                    seed=self.seed,
                    max_images=cap,
                    overwrite=True,
                    progress=self.progress,
                )
                sample_gan(
                    folder / f"gan_{name}",
                    int(gan["samples_per_class"]),
                    synth / name,
                    seed=self.seed,
                    overwrite=True,
                )
        runs: dict[str, Any] = {}
        random = False
        for recipe in exp.recipes:
            for with_gan in (False, True):
                cfg, more = plan_config(exp, recipe, self.data_root, self.budget, self.seed)
                if with_gan:
                    cfg = cfg.override([f"data.extra_train={json.dumps(str(synth))}"])
                random = random or any(n.startswith("RANDOM") for n in more)
                notes.extend(n for n in more if n not in notes)
                run = folder / f"{recipe}{'_gan' if with_gan else ''}"
                self._train_one(cfg, run)
                runs[f"{recipe}{' + GAN' if with_gan else ''}"] = run_values(run, report.framework)
        notes.append(
            "synthetic images join the training split only; report 004 mixed them into a random 70/15/15 "
            "split of all 8,416 images, so its GAN test set holds synthetic images and differs from the "
            "base models'"
        )
        figures = {
            f"samples_{name}": str(p)
            for name in classes
            for p in sorted((folder / f"gan_{name}" / "samples").glob("epoch_*.png"))[-1:]
        }
        return {"notes": notes, "plan": plan, "runs": runs, "plots": figures, "random_weights": random}


def _same(saved: RunConfig, planned: RunConfig) -> bool:
    """A finished run's config is the planned one (values the pipeline fills in when unset are ignored)."""
    ds, dp = saved.model_dump(mode="json"), planned.model_dump(mode="json")
    for section, key in (("data", "image_size"), ("model", "in_channels")):
        if dp[section][key] is None:
            ds[section][key] = None
    return ds == dp


def _sweep_rows(folder: Path) -> list[dict[str, Any]]:
    """sweep.csv's rows (trial, parameters, validation objective, test accuracy, seconds)."""
    path = folder / "sweep.csv"
    if not path.is_file():
        raise DataError(f"{folder}: the sweep wrote no sweep.csv")
    return read_csv(path)
