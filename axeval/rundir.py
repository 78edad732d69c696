"""The run directory: every stage reads and writes here, so any stage can be re-run or resumed alone."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from axdata.io import atomic_write_json, atomic_write_text

LEADERBOARD_FILE = "leaderboard.json"
# The run lock (`axeval.pipeline.locked_run_directory`) and the file naming its holder, in the run directory.
LOCK_FILE, LOCK_OWNER_FILE = ".axbench.lock", ".axbench.lock.owner"


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


def enclosing_run_directory(path: str | Path) -> Path | None:
    """The run directory `path` lies in (or is), if any: the nearest folder holding a run's `config.yaml` with its
    stage stamps or its lock. Commands that write a file given by path take that run's lock."""
    current = Path(path).resolve()
    for folder in (current, *current.parents):
        run = RunDirectory(folder)
        if run.config_path.is_file() and (run.stages_dir.is_dir() or (folder / LOCK_FILE).exists()):
            return folder
    return None


def enclosing_run_directories(paths: Iterable[str | Path | None]) -> list[Path]:
    """The run directories any of `paths` lies in, each once (None entries and paths outside runs ignored): what a
    command writing those paths locks (`axeval.pipeline.locked_run_directories`)."""
    found = (enclosing_run_directory(path) for path in paths if path is not None)
    return list(dict.fromkeys(root for root in found if root is not None))
