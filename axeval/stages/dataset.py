"""Where a run's dataset lives: generated into the run, or an existing dataset directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from axdata.builders import list_configs, list_splits, read_concepts, read_split
from axdata.concepts import Concept
from axdata.errors import InputError
from axdata.hashing import file_hash
from axeval.pipeline import RunContext
from axeval.stages.data import default_dataset_config


@dataclass(frozen=True)
class RunDataset:
    directory: Path
    config: str

    def split(self, name: str) -> pd.DataFrame:
        return read_split(self.directory, self.config, name)

    def has_split(self, name: str) -> bool:
        return name in list_splits(self.directory, self.config)

    def concepts(self) -> list[Concept]:
        return read_concepts(self.directory, self.config)

    def fingerprint(self, *splits: str) -> dict[str, str]:
        """Content hashes of the split files a stage reads, so new data re-runs it."""
        folder = self.directory / self.config
        return {path.name: file_hash(path) for path in sorted(folder.glob("*"))
                if path.is_file() and (path.name == "concepts.jsonl" or path.name.split("-")[0] in splits)}


def run_dataset(ctx: RunContext) -> RunDataset:
    config = ctx.config
    if config.run.dataset_dir is None:
        name = config.data.dataset_config or default_dataset_config(config.model.model, config.run.layer)
        return RunDataset(ctx.run_dir.data_dir, name)
    directory = Path(config.run.dataset_dir)
    configs = list_configs(directory)
    if config.data.dataset_config is not None:
        if config.data.dataset_config not in configs:
            raise InputError(f"run.dataset_dir {directory} has no config {config.data.dataset_config!r}; it has "
                             f"{configs or 'none'}.")
        return RunDataset(directory, config.data.dataset_config)
    if len(configs) != 1:
        raise InputError(f"run.dataset_dir {directory} holds configs {configs or 'none'}: set data.dataset_config "
                         "to the one to use.")
    return RunDataset(directory, configs[0])
