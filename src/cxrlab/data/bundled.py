"""Data shipped inside the package: PneumoniaMNIST (MedMNIST v2, Yang et al., Scientific Data 2023,
CC BY 4.0), 5,856 pediatric chest X-rays from Kermany et al. (2018) at 28×28, official split."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled_pneumoniamnist() -> Path:
    """Path of the bundled pneumoniamnist.npz."""
    return Path(str(resources.files("cxrlab") / "assets" / "pneumoniamnist.npz"))
