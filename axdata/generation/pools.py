"""Instruction pools: the instructions that positives, negatives and steering prompts answer.

A pool has, per genre (text / code / math), a `train` and a `test` list — training data samples the
first, detection-eval data the second, so eval instructions are never training instructions — and a
`general` list for steering prompts. Each genre's source is one of:

- ``"shipped"``: the small pool written for the embedded demo (``axdata/resources/instructions``);
- a Hub dataset id with the paper's filters (spec §1.1): Dolly-15k ``open_qa`` rows with an empty
  context, GSM8K ``main`` train questions, Python instructions with an empty ``input``, AlpacaEval
  instructions; instructions of 500 characters or more are dropped;
- a local ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file with an ``input`` (or ``instruction`` /
  ``question``) column and an optional ``split`` column (train / test); without one, rows are split
  like the Hub sources: the first `pool_size` rows train, the next `pool_size` test.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axdata.errors import InputError
from axdata.generation.config import PAPER_POOLS, SHIPPED_POOL
from axdata.hashing import content_hash
from axdata.schema import GENRES

logger = logging.getLogger(__name__)

MAX_INSTRUCTION_CHARS = 500
POOL_SPLITS = ("train", "test")
_TEXT_COLUMNS = ("input", "instruction", "question")
_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class InstructionPoolError(InputError):
    """An instruction pool cannot be loaded; the message names the source, the problem and the fix."""


@dataclass(frozen=True)
class HubSource:
    """How to read one of the paper's pools from the Hub: dataset, config, split, text column, row filter."""

    path: str
    name: str | None
    split: str
    column: str
    keep: Callable[[Mapping[str, Any]], bool]


def _short(text: str) -> bool:
    return len(text) < MAX_INSTRUCTION_CHARS


HUB_SOURCES: dict[str, HubSource] = {
    PAPER_POOLS["text"]: HubSource(
        PAPER_POOLS["text"], None, "train", "instruction",
        lambda row: row["category"] == "open_qa" and not row["context"] and _short(row["instruction"])),
    PAPER_POOLS["math"]: HubSource(PAPER_POOLS["math"], "main", "train", "question",
                                   lambda row: _short(row["question"])),
    PAPER_POOLS["code"]: HubSource(PAPER_POOLS["code"], None, "train", "instruction",
                                   lambda row: not row["input"] and _short(row["instruction"])),
    PAPER_POOLS["general"]: HubSource(PAPER_POOLS["general"], "alpaca_eval", "eval", "instruction",
                                      lambda row: True),
}


@dataclass(frozen=True)
class InstructionPool:
    """`splits[genre][train|test]` for text/code/math, `general` for steering; `sources` says where each came from."""

    splits: Mapping[str, Mapping[str, tuple[str, ...]]]
    general: tuple[str, ...]
    sources: Mapping[str, str]

    def get(self, genre: str, split: str) -> tuple[str, ...]:
        instructions = self.splits[genre][split]
        if not instructions:
            raise InstructionPoolError(
                f"The {genre} instruction pool ({self.sources[genre]}) has no {split!r} instructions; give it "
                "more rows or a `split` column with both train and test."
            )
        return instructions

    def fingerprint(self) -> str:
        """A hash of every instruction: generated rows depend on the pool's exact content."""
        return content_hash({"splits": {g: dict(s) for g, s in self.splits.items()}, "general": self.general})


def load_pool(sources: Mapping[str, str], pool_size: int = 1000) -> InstructionPool:
    """Load each genre's pool and the general (steering) pool; `sources` maps text/code/math/general to
    'shipped', a Hub dataset id or a local file (see the module docstring)."""
    splits: dict[str, dict[str, tuple[str, ...]]] = {}
    for genre in GENRES:
        rows = _load_rows(sources.get(genre, SHIPPED_POOL), genre, pool_size)
        splits[genre] = {split: tuple(text for text, row_split in rows if row_split == split) for split in POOL_SPLITS}
    general_rows = _load_rows(sources.get("general", SHIPPED_POOL), "general", pool_size)
    general = tuple(text for text, _ in general_rows)
    if not general:
        raise InstructionPoolError(f"The steering instruction pool ({sources.get('general')}) is empty; "
                                   "point steering_instructions at a file or dataset with instructions.")
    return InstructionPool(splits, general, {key: sources.get(key, SHIPPED_POOL) for key in (*GENRES, "general")})


def _load_rows(source: str, genre: str, pool_size: int) -> list[tuple[str, str]]:
    """(instruction, split) pairs; the general pool marks every row 'train'."""
    if source == SHIPPED_POOL:
        return _shipped(genre)
    local = Path(source)
    if local.suffix.lower() in _LOCAL_FORMATS:
        if not local.exists():
            raise InstructionPoolError(f"Instruction file {source} for the {genre} pool does not exist; "
                                       "fix the path or use 'shipped'.")
        return _from_records(_load_dataset(_LOCAL_FORMATS[local.suffix.lower()], data_files=str(local),
                                           split="train"), source, genre, pool_size)
    hub = HUB_SOURCES.get(source)
    if hub is None:
        raise InstructionPoolError(
            f"Instruction source {source!r} for the {genre} pool is neither 'shipped', a local "
            f"{'/'.join(_LOCAL_FORMATS)} file, nor a known dataset ({', '.join(HUB_SOURCES)}); convert it to a "
            "local file with an `input` column."
        )
    dataset = _load_dataset(hub.path, hub.name, split=hub.split)
    texts = [row[hub.column].strip() for row in dataset if hub.keep(row)]
    return _split_by_position(texts, pool_size, genre)


def _load_dataset(*args: Any, **kwargs: Any) -> Any:
    import datasets  # deferred: the shipped pool must load without importing `datasets`

    return datasets.load_dataset(*args, **kwargs)


def _split_by_position(texts: list[str], pool_size: int, genre: str) -> list[tuple[str, str]]:
    if genre == "general":
        return [(text, "train") for text in texts]
    return [(text, "train") for text in texts[:pool_size]] + [
        (text, "test") for text in texts[pool_size:2 * pool_size]]


def _from_records(rows: Any, source: str, genre: str, pool_size: int) -> list[tuple[str, str]]:
    names = rows.column_names
    column = next((name for name in _TEXT_COLUMNS if name in names), None)
    if column is None:
        raise InstructionPoolError(f"Instruction file {source} has columns {names}; it needs one of "
                                   f"{', '.join(_TEXT_COLUMNS)} holding the instructions.")
    texts = [str(text).strip() for text in rows[column]]
    if "split" not in names:
        return _split_by_position(texts, pool_size, genre)
    bad = sorted({str(split) for split in rows["split"]} - set(POOL_SPLITS))
    if bad:
        raise InstructionPoolError(f"Instruction file {source} has split values {bad}; use train or test.")
    return list(zip(texts, rows["split"]))


def _shipped(genre: str) -> list[tuple[str, str]]:
    resource = importlib.resources.files("axdata") / "resources" / "instructions" / f"{genre}.jsonl"
    records = [json.loads(line) for line in resource.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(record["input"], record.get("split", "train")) for record in records]
