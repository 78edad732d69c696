"""What the trained results kept as folders (adapters, fine-tuned weights) share: their concept bookkeeping
and the `config.json` every such folder starts with."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axmethods.dictionary import DictionaryError

if TYPE_CHECKING:
    from axdata.concepts import Concept
    from axmethods.models import TargetModel

logger = logging.getLogger(__name__)

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


class ConceptResult:
    """Mixin of the folder-kept results: `concepts`, `method`, `base_model` and `config` are dataclass fields."""

    concepts: list[Concept]
    method: str
    base_model: str
    config: dict[str, Any]

    @property
    def n_concepts(self) -> int:
        return len(self.concepts)

    @property
    def concept_ids(self) -> list[int]:
        return [c.concept_id for c in self.concepts]

    @property
    def steering_factors(self) -> list[float]:
        """The factor grid steering inference uses (factor-free methods: [1.0])."""
        return [float(f) for f in self.config.get("steering_factors", [1.0])]

    def check_model(self, target: TargetModel) -> None:
        if target.model_id != self.base_model:
            logger.warning("The %s result was trained on %s but is applied to %s", self.method, self.base_model,
                           target.model_id)
