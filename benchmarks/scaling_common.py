"""Constants shared by the scaling-study modules (see scaling.py for the study itself)."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "_data"
IMG_DIR = HERE / "img"
ESTIMATORS = ("attgt", "attgt_boot", "event_study", "stacked_did")
STEPS = ("load", *ESTIMATORS)
REDUCE_SUFFIXES = ("-sum", "-merge", "-root")
COLORS = {"load": "k", "attgt": "C0", "attgt_boot": "C1", "event_study": "C2", "stacked_did": "C3"}
MiB = 2**20
