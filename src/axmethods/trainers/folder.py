"""The `config.json` every trained-result folder starts with (adapters, fine-tuned weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from axmethods.dictionary import DictionaryError

CONFIG_FILE = "config.json"


def read_folder_config(root: Path, expected_format: str, written_by: str) -> dict[str, Any]:
    """`root/config.json` if it exists, parses and names `expected_format`; errors say what to do otherwise."""
    path = root / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root} has no {CONFIG_FILE}; pass a folder written by {written_by}.")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DictionaryError(f"{path} is not valid JSON ({error}); the folder is damaged: re-save it.") from None
    if not isinstance(record, dict) or record.get("format") != expected_format:
        found = record.get("format") if isinstance(record, dict) else None
        raise DictionaryError(f"{path} is not an {expected_format} config (format {found!r}); load the folder with "
                              "axmethods.trainers.load_steering_artifact, which recognises every kind.")
    return record
