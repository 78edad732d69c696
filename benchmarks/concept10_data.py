"""The real AxBench Concept10 data the Concept10 benchmarks read (`../shared/data/axbench/concept10/<setting>`).

Imported once into a temporary directory through `axbench data import`'s code and read back as our splits, so every
benchmark sees exactly what a user's `axbench data import` would give.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from axdata.builders import read_concepts, read_split
from axdata.builders.axbench_import import import_axbench
from axdata.concepts import Concept

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "axbench" / "concept10"
DEFAULT_SETTING = "prod_2b_l20_v1"


@dataclass
class Concept10:
    setting: str
    concepts: list[Concept]
    train: pd.DataFrame
    latent: pd.DataFrame


def load_concept10(setting: str = DEFAULT_SETTING) -> Concept10:
    """Concept10 `setting`'s concepts and train / latent splits; exits with a clear message where it is absent."""
    source = SHARED / setting
    if not source.is_dir():
        raise SystemExit(f"{source} not found: this benchmark needs the shared AxBench Concept10 data beside the "
                         "repository (../shared/data/axbench/concept10).")
    with tempfile.TemporaryDirectory() as tmp:
        import_axbench(source, tmp, "c10")
        return Concept10(setting, read_concepts(tmp, "c10"), read_split(tmp, "c10", "train"),
                         read_split(tmp, "c10", "latent"))
