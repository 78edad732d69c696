"""The run directory: every stage reads and writes here, so any stage can be re-run or resumed alone."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from axdata.io import atomic_write_json, atomic_write_text

LEADERBOARD_FILE = "leaderboard.json"


@dataclass(frozen=True)
class RunDirectory:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def dictionaries_dir(self) -> Path:
        return self.root / "dictionaries"

    @property
    def inference_dir(self) -> Path:
        return self.root / "inference"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def leaderboard_path(self) -> Path:
        """The report's leaderboard as JSON (what the end-of-run summary and the published leaderboard read)."""
        return self.eval_dir / LEADERBOARD_FILE

    def read_config(self) -> dict[str, Any]:
        """The resolved config the run wrote first (`config.yaml`); {} when there is none."""
        if not self.config_path.is_file():
            return {}
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}

    @property
    def llm_cache_path(self) -> Path:
        return self.root / "llm-cache.sqlite"

    @property
    def llm_ledger_path(self) -> Path:
        return self.root / "llm-ledger.jsonl"

    @property
    def stages_dir(self) -> Path:
        return self.root / "stages"

    def write_config(self, resolved: dict[str, Any], hashes: dict[str, Any]) -> None:
        """The resolved config comes first in every run, with the hashes that make it reproducible."""
        text = yaml.safe_dump({**resolved, "hashes": hashes}, sort_keys=False, allow_unicode=True)
        atomic_write_text(self.config_path, text)

    def stamp_path(self, stage: str) -> Path:
        return self.stages_dir / f"{stage}.json"

    def read_stamp(self, stage: str) -> dict[str, Any] | None:
        path = self.stamp_path(stage)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None  # a damaged stamp only means the stage runs again

    def write_stamp(self, stage: str, stamp: dict[str, Any]) -> None:
        atomic_write_json(self.stamp_path(stage), stamp)
