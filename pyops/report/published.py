"""Published ImageNet top-1 accuracies, read from ``published_top1.csv`` (each row names its
source)."""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

DATA_FILE = Path(__file__).with_name("published_top1.csv")


@dataclass(frozen=True)
class Published:
    """A model's published ImageNet-1k top-1 accuracy (%) and where it was published."""

    top1: float
    source: str


@functools.cache
def published_top1() -> dict[str, Published]:
    """``{model name: Published}`` for every row of the data file."""
    with DATA_FILE.open(newline="") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {row["model"]: Published(float(row["top1"]), row["source"]) for row in rows}
