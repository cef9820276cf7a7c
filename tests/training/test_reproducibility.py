"""Same seed, data and machine → same metrics (full training, not only the fast path)."""

from __future__ import annotations

from cxrlab.config import RunConfig
from cxrlab.pipeline.train import train
from cxrlab.runs import read_csv


def _cfg(data: str, seed: int) -> RunConfig:
    cfg = RunConfig()
    cfg.data.path = data
    cfg.data.image_size = 32
    cfg.data.augment = True
    cfg.model.name = "small_cnn"
    cfg.train.epochs = 2
    cfg.train.batch_size = 8
    cfg.train.seed = seed
    cfg.train.tensorboard = False
    cfg.eval.tsne = False
    cfg.eval.bootstrap = 100
    return cfg


def test_same_seed_same_history_and_metrics(small_covid, tmp_path):
    a = train(_cfg(str(small_covid), 7), tmp_path / "a", progress=False)
    b = train(_cfg(str(small_covid), 7), tmp_path / "b", progress=False)
    train(_cfg(str(small_covid), 8), tmp_path / "c", progress=False)
    ha, hb, hc = (read_csv(tmp_path / r / "history.csv") for r in "abc")
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    assert a["test"]["loss"] == b["test"]["loss"]
    assert a["test"]["accuracy_ci95"] == b["test"]["accuracy_ci95"]
    assert [r["train_loss"] for r in ha] != [r["train_loss"] for r in hc]  # the seed matters
