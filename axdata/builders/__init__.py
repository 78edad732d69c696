"""Dataset builders and the on-disk layout they share (the same layout a Hub dataset repo has).

```
<out>/<config>/<split>-00000-of-00001.parquet   one config per model/layer setting, splits from axdata.schema
<out>/<config>/concepts.jsonl                   the config's concepts, AxBench metadata.jsonl format
<out>/provenance.json                           optional: how the data was made (generator, hashes, seeds, cost)
```
Concepts live beside their config's shards because every setting has its own concept list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from axdata.concepts import Concept, ConceptFileError, load_concepts, write_concepts_jsonl
from axdata.errors import InputError
from axdata.io import atomic_path, atomic_write_json
from axdata.schema import SPLITS, columns, features

CONCEPTS_FILE = "concepts.jsonl"
PROVENANCE_FILE = "provenance.json"
_CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_config_name(config: str) -> str:
    """Return `config` if it can name a folder and a Hub dataset config; raise ValueError otherwise."""
    if not _CONFIG_NAME.fullmatch(config):
        raise InputError(f"Config name {config!r} is not usable as a folder / Hub config name; use letters, "
                         "digits, '.', '_' and '-', starting with a letter or digit (e.g. 'gemma-2-2b-it-l20').")
    return config


def split_files(out_dir: str | Path, config: str, split: str) -> list[Path]:
    """The shards of one split, in order; empty when the split was never written."""
    columns(split)  # rejects unknown split names
    return sorted((Path(out_dir) / config).glob(f"{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].parquet"))


def concepts_path(out_dir: str | Path, config: str) -> Path:
    return Path(out_dir) / config / CONCEPTS_FILE


def list_configs(out_dir: str | Path) -> list[str]:
    """Configs under `out_dir`: folders that hold at least one split shard."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    return sorted(child.name for child in root.iterdir()
                  if child.is_dir() and any(split_files(root, child.name, split) for split in SPLITS))


def resolve_config(out_dir: str | Path, config: str | None) -> str:
    """`config` if `out_dir` holds it; None: the only config there is (`--dataset-config` of every command)."""
    configs = list_configs(out_dir)
    if not configs:
        raise FileNotFoundError(f"{out_dir} holds no dataset config (<config>/<split>-*.parquet); check the path.")
    if config is None:
        if len(configs) > 1:
            raise InputError(f"{out_dir} holds dataset configs {', '.join(configs)}; pick one with --dataset-config NAME.")
        return configs[0]
    if config not in configs:
        raise InputError(f"{out_dir} has no dataset config {config!r}; it holds {', '.join(configs)}.")
    return config


def list_splits(out_dir: str | Path, config: str) -> list[str]:
    """Splits written for `config`, in `axdata.schema.SPLITS` order."""
    return [split for split in SPLITS if split_files(out_dir, config, split)]


def write_split(table: pa.Table, out_dir: str | Path, config: str, split: str) -> Path:
    """Write one split as a single shard, atomically; shards of an earlier write of the split are removed.

    `table` should come from `axdata.schema.conform_table` / `table_from_frame` (it carries the Features).
    """
    path = Path(out_dir) / check_config_name(config) / f"{split}-00000-of-00001.parquet"
    stale = [shard for shard in split_files(out_dir, config, split) if shard != path]
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    for shard in stale:
        shard.unlink()
    return path


def write_concepts(concepts: list[Concept], out_dir: str | Path, config: str) -> Path:
    path = concepts_path(out_dir, check_config_name(config))
    write_concepts_jsonl(path, concepts)
    return path


def read_concepts(out_dir: str | Path, config: str) -> list[Concept]:
    """The concepts of `config`, ids and order exactly as written."""
    return load_concepts(concepts_path(out_dir, config), dedupe=False)


def read_checked_concepts(out_dir: str | Path, config: str, *, source: str | None = None) -> list[Concept]:
    """The concepts of `config` (`read_concepts`), checked against its splits: every concept id a row names (shared
    negatives aside) must be listed, or its rows would train, score and steer a concept nobody can name. Errors
    are `ConceptFileError`s naming the file as `source` when given (a pulled file's path in its Hub repo)."""
    path = concepts_path(out_dir, config)
    try:
        concepts = load_concepts(path, dedupe=False)
        listed = {concept.concept_id for concept in concepts}
        for split in list_splits(out_dir, config):
            files = split_files(out_dir, config, split)
            if "concept_id" not in pq.read_schema(files[0]).names:
                continue
            used = set(pq.read_table(files, columns=["concept_id"]).column("concept_id").to_pylist())
            missing = sorted(cid for cid in used if cid is not None and cid >= 0 and cid not in listed)
            if missing:
                raise ConceptFileError(path, f"field 'concept_id': the {split!r} split has rows of {len(missing)} "
                                       f"concepts the file does not list (ids {missing[:10]}); it lists "
                                       f"{len(listed)}", "list every concept of the config's splits (re-pull, "
                                       "re-import or re-generate the dataset)")
    except ConceptFileError as error:
        raise error.named(source) if source else error from None
    return concepts


def write_provenance(provenance: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Record how the dataset was made (e.g. generator_model, template_hashes, seeds, cost_usd, source_hashes);
    `axbench data push` puts it in the card's `provenance`."""
    path = Path(out_dir) / PROVENANCE_FILE
    atomic_write_json(path, dict(provenance))
    return path


def read_provenance(out_dir: str | Path) -> dict[str, Any]:
    """The dataset's recorded provenance; empty when none was recorded."""
    path = Path(out_dir) / PROVENANCE_FILE
    if not path.is_file():
        return {}
    try:
        provenance = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error}); fix or delete the file (it only feeds the card).") from None
    if not isinstance(provenance, dict):
        # ValueError like every other bad-input error here: callers report those to the user.
        raise InputError(f"{path}: holds a {type(provenance).__name__}, not a JSON object; "
                         'write an object such as {"generator_model": "gpt-4o-mini"}.')
    return provenance


def read_split(out_dir: str | Path, config: str, split: str) -> pd.DataFrame:
    """One split as a DataFrame, read straight from its shards (no `datasets` cache)."""
    return pq.read_table(_existing_files(out_dir, config, split)).to_pandas()


def load_split(out_dir: str | Path, config: str, split: str, *, cache_dir: str | Path | None = None
               ) -> datasets.Dataset:
    """One split as a `datasets.Dataset`, through a plain `load_dataset("parquet", …)` with the schema's
    Features (plus the file's own types for columns the schema does not know)."""
    files = _existing_files(out_dir, config, split)
    return datasets.load_dataset(
        "parquet",
        data_files={split: [str(file) for file in files]},
        split=split,
        features=features(split, pq.read_schema(files[0])),
        cache_dir=None if cache_dir is None else str(cache_dir),
    )


def _existing_files(out_dir: str | Path, config: str, split: str) -> list[Path]:
    files = split_files(out_dir, config, split)
    if not files:
        present = ", ".join(list_splits(out_dir, config)) or "none"
        raise FileNotFoundError(f"No {split!r} shards in {Path(out_dir) / config} (splits present: {present}); "
                                "write the split first (e.g. `axbench data import`).")
    return files
