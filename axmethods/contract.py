"""The one result contract: what every trained result is and how steering inference applies one.

- `ConceptResult` (and `FolderResult`, for results kept as one config.json folder): the fields every result has and
  the one way it moves — `save_pretrained` / `from_pretrained` / `push_to_hub`, a card rendered from `hub_cards/`.
- Two protocols name the roles: a `Detector` is what latent inference scores with, a `Steerer` what steering
  inference generates with; `result.steerer()` makes one, `UnsteeredBaseline` is the steerer that adds nothing.
- `DictionaryError`: a result is malformed or does not fit the model.

A foundation of `axmethods` (see tests/test_layers.py): every result module builds on it and it imports none of
them. The kinds themselves, and `load_result` that opens any of them, are `axmethods.results`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import torch

from axdata.errors import InputError
from axdata.io import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd
    from typing_extensions import Self  # typing.Self from Python 3.11

    from axdata.concepts import Concept
    from axmethods.models import TargetModel

DetectorKind = Literal["residual", "text", "target-model"]

logger = logging.getLogger(__name__)

CONFIG_FILE, CARD_FILE = "config.json", "README.md"
EVAL_RESULTS_DIR = ".eval_results"


def eval_results_repo_path(entries: Sequence[Mapping[str, Any]]) -> str:
    """Where a repo keeps a run's `.eval_results` entries: `.eval_results/axbench-<config>.yaml`, the config read
    from the entries' task ids (`steering-<config>`, `suppression-<config>`, …), so results on several dataset
    configs sit side by side; `.eval_results/axbench.yaml` when the tasks name none. `axbench eval push` and
    `axbench dictionary push --eval-results` both write here."""
    config = next((str(entry["dataset"]["task_id"]).split("-", 1)[1] for entry in entries
                   if "-" in str(entry.get("dataset", {}).get("task_id", ""))), None)
    return f"{EVAL_RESULTS_DIR}/axbench{'-' + config if config else ''}.yaml"
# Every file a result is made of (what `from_pretrained` downloads): a repo may hold much else (checkpoints, logs).
RESULT_PATTERNS = ["README.md", "*.json", "*.jsonl", "*.safetensors", ".eval_results/*"]

class Detector(Protocol):
    """A result latent inference can score with: its `detector` says how (a residual read-out, a text classifier
    or the target model rating texts); `rows` maps concept ids to its rows."""

    method: str
    layer: int
    detector: ClassVar[DetectorKind]

    def rows(self, concept_ids: Sequence[int]) -> torch.Tensor: ...


class Steerer(Protocol):
    """How a method steers a batch: the instruction it templates and the hooks it installs.

    Optional attributes: `factors` (the method's own factor grid, used instead of the run's),
    `batch_by_concept` (every batch holds one concept's rows, for steerers that swap weights in) and
    `steered_concept_ids` (the concepts it steers, None for all: the others' rows are not generated).
    """

    method: str
    factor_free: bool

    def provenance(self) -> dict[str, Any]: ...

    def instructions(self, prompts: pd.DataFrame) -> list[str]:
        """The user-turn text the model answers for each row of the steering split (the judge still rates the
        answer against the row's original instruction)."""
        ...

    def intervene(self, target: TargetModel, rows: pd.DataFrame) -> tuple[AbstractContextManager[Any], np.ndarray]:
        """A context manager steering the batch `rows` (in order) and each row's magnitude (NaN if none)."""
        ...


class UnsteeredBaseline:
    """No intervention: the target model's own answers, one per prompt (a factor-free reference)."""

    method = "unsteered"
    factor_free = True

    def provenance(self) -> dict[str, Any]:
        return {}

    def instructions(self, prompts: pd.DataFrame) -> list[str]:
        return prompts["original_prompt"].tolist()

    def intervene(self, target: TargetModel, rows: pd.DataFrame) -> tuple[AbstractContextManager[Any], np.ndarray]:
        return nullcontext(), np.full(len(rows), np.nan)


class DictionaryError(InputError):
    """A result is malformed or does not fit the model it is used with."""


class ConceptResult:
    """What every result holds (`concepts`, `method`, `base_model`, `config` as dataclass fields) and how it moves.

    Subclasses set `FORMAT` (the `format` of their config.json) and implement `write_files(root)`,
    `load(directory, ...)` and `model_card(...)`; `save_pretrained`, `from_pretrained` and `push_to_hub` come
    from here.
    """

    FORMAT: ClassVar[str]
    KIND: ClassVar[str] = "result"  # how messages name it: dictionary, adapters, fine-tuned concepts
    # How latent inference scores texts with it (`axmethods.inference.latent`); None: it does not detect.
    detector: ClassVar[DetectorKind | None] = None
    steers: ClassVar[bool] = False  # True where `steerer()` gives a steerer
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

    def rows(self, concept_ids: Sequence[int]) -> torch.Tensor:
        """Row indices of `concept_ids` (a LongTensor), or an error naming the unknown ids."""
        index = {cid: i for i, cid in enumerate(self.concept_ids)}
        missing = [int(cid) for cid in concept_ids if int(cid) not in index]
        if missing:
            raise DictionaryError(f"concept_ids {missing[:10]} are not in this {self.method} {self.KIND} (it holds "
                                  f"{self.concept_ids[:10]}…)")
        return torch.tensor([index[int(cid)] for cid in concept_ids], dtype=torch.long)

    def steerer(self, *, kind: str = "addition", positions: str = "all") -> Steerer:
        """How steering inference applies this result (a `Steerer`)."""
        raise DictionaryError(f"The {self.method} {self.KIND} is detection-only: it has no steering intervention. "
                              "Steer with a steering method's result (e.g. DiffMean, ReFT-r1, prompt-steering); use "
                              "this one with `infer latent`.")

    def check_model(self, target: TargetModel) -> None:
        if target.model_id != self.base_model:
            logger.warning("The %s result was trained on %s but is applied to %s", self.method, self.base_model,
                           target.model_id)

    def save_pretrained(self, directory: str | Path, *, datasets: Sequence[str] = (),
                        eval_results: Sequence[Mapping[str, Any]] = ()) -> Path:
        """Write the result's files atomically, its card at the root, and `eval_results` (the Hub's
        `.eval_results` entries, what `axbench eval report` writes) to `eval_results_repo_path(eval_results)` and the
        card's model-index. Returns the folder holding the result's config (a dictionary's layer folder)."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        folder = self.write_files(root)
        atomic_write_text(root / CARD_FILE, self.model_card(datasets=datasets, eval_results=eval_results))
        if eval_results:
            import yaml

            atomic_write_text(root / eval_results_repo_path(eval_results),
                              yaml.safe_dump(list(map(dict, eval_results)), sort_keys=False, allow_unicode=True))
        logger.info("Saved the %s %s (%d concepts) to %s", self.method, self.KIND, self.n_concepts, folder)
        return folder

    def write_files(self, root: Path) -> Path:
        """Write everything but the card into `root`; return the folder holding the config."""
        raise NotImplementedError

    def model_card(self, *, datasets: Sequence[str] = (), eval_results: Sequence[Mapping[str, Any]] = (),
                   repo_id: str | None = None) -> str:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str | Path, **kwargs: Any) -> Self:
        raise NotImplementedError

    def push_patterns(self) -> list[str]:
        """Files of the repo this push replaces (stale ones go); a dictionary replaces only its layer folder."""
        return ["*"]

    @classmethod
    def download_patterns(cls, **load_kwargs: Any) -> list[str]:
        """The repo files `from_pretrained(..., **load_kwargs)` needs."""
        return RESULT_PATTERNS

    @classmethod
    def from_pretrained(cls, repo_id_or_dir: str | Path, *, revision: str | None = None,
                        token: str | None = None, **kwargs: Any) -> Self:
        """Load from a local directory or a Hub model repo (only the files it needs are downloaded)."""
        return cls.load(fetch(repo_id_or_dir, revision=revision, token=token,
                              patterns=cls.download_patterns(**kwargs)), **kwargs)

    def push_to_hub(self, repo_id: str, *, revision: str | None = None, private: bool | None = None,
                    token: str | None = None, commit_message: str | None = None, datasets: Sequence[str] = (),
                    eval_results: Sequence[Mapping[str, Any]] = ()) -> str:
        """Upload the result and its card to a Hub model repo (created if missing); returns the commit URL."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="axbench-result-") as staging:
            self.save_pretrained(staging, datasets=datasets, eval_results=eval_results)
            atomic_write_text(Path(staging) / CARD_FILE,
                              self.model_card(datasets=datasets, eval_results=eval_results, repo_id=repo_id))
            commit = api.upload_folder(
                repo_id=repo_id, repo_type="model", folder_path=staging, revision=revision,
                commit_message=commit_message or f"Upload {self.method} ({self.n_concepts} concepts)",
                delete_patterns=self.push_patterns())
        logger.info("Pushed the %s result to %s", self.method, repo_id)
        return str(commit)


class FolderResult(ConceptResult):
    """A result kept as `config.json` (+ `concepts.jsonl`, optional tensors) at the folder's root.

    Subclasses give `record()` (their config.json fields beyond the shared ones), `tensors()` and
    `from_record(record, concepts, tensors)`; the rest is here.
    """

    TENSORS_FILE: ClassVar[str] = "tensors.safetensors"
    CARD: ClassVar[str] = "baseline_card.md"
    base_model_revision: str | None

    def record(self) -> dict[str, Any]:
        return {}

    @property
    def config_hash(self) -> str:
        from axdata.hashing import content_hash

        return content_hash({"method": self.method, "config": self.config, **self.record()})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def from_record(cls, record: dict[str, Any], concepts: list[Concept],
                    tensors: dict[str, torch.Tensor]) -> Self:
        raise NotImplementedError

    def write_files(self, root: Path) -> Path:
        from safetensors.torch import save_file

        from axdata.concepts import write_concepts_jsonl
        from axdata.io import atomic_path, atomic_write_json

        tensors = self.tensors()
        if tensors:
            with atomic_path(root / self.TENSORS_FILE) as tmp:
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                          metadata={"format": self.FORMAT, "method": self.method})
        write_concepts_jsonl(root / "concepts.jsonl", self.concepts)
        atomic_write_json(root / CONFIG_FILE, {
            "format": self.FORMAT, "format_version": 1, "method": self.method, "base_model": self.base_model,
            "base_model_revision": self.base_model_revision, "config": self.config, **self.record()})
        return root

    @classmethod
    def load(cls, directory: str | Path, **_: Any) -> Self:
        from safetensors.torch import load_file

        from axdata.concepts import ConceptFileError, load_concepts

        root = Path(directory)
        record = read_folder_config(root, cls.FORMAT, f"{cls.__name__}.save_pretrained")
        try:
            concepts = load_concepts(root / "concepts.jsonl", dedupe=False)
            tensors = load_file(str(root / cls.TENSORS_FILE)) if (root / cls.TENSORS_FILE).is_file() else {}
        except (ConceptFileError, OSError) as error:
            raise DictionaryError(f"{root}: {error}; the folder is damaged: re-save or re-download it.") from None
        nonfinite = nonfinite_tensors(tensors)
        if nonfinite:
            raise DictionaryError(f"{root / cls.TENSORS_FILE}: tensor {', '.join(nonfinite)} holds NaN or infinite "
                                  "values; the training diverged or the file is damaged: retrain or re-download it.")
        return cls.from_record(record, concepts, tensors)

    def model_card(self, *, datasets: Sequence[str] = (), eval_results: Sequence[Mapping[str, Any]] = (),
                   repo_id: str | None = None) -> str:
        from axdata.cards import render_card

        return render_card(self.CARD, metadata=card_metadata(self, datasets, eval_results, repo_id),
                           result=self, repo_id=repo_id or "DIR_OR_REPO", datasets=list(datasets),
                           examples=self.concepts[:10])


def card_metadata(result: ConceptResult, datasets: Sequence[str], eval_results: Sequence[Mapping[str, Any]],
                  model_name: str | None, *, tags: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML header every result's card starts with (library, base model, tags, datasets, model-index)."""
    metadata: dict[str, Any] = {"library_name": "axbench", "base_model": result.base_model,
                                "tags": sorted({"axbench", "steering", result.method.lower(), *tags})}
    if datasets:
        metadata["datasets"] = list(datasets)
    if eval_results:
        metadata["model-index"] = model_index(model_name or result.method, eval_results)
    return metadata


def model_index(model_name: str, eval_results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The card's `model-index` from `.eval_results` entries (dataset, task, value, revision, notes)."""
    from huggingface_hub.repocard_data import EvalResult, eval_results_to_model_index

    results = []
    for entry in eval_results:
        task = str(entry["dataset"].get("task_id", "axbench"))
        kind, _, config = task.partition("-")
        results.append(EvalResult(
            task_type=kind, task_name=task, dataset_type=entry["dataset"]["id"], dataset_name=entry["dataset"]["id"],
            dataset_config=config or None, dataset_revision=entry["dataset"].get("revision"),
            metric_type="auroc" if kind == "concept_detection" else "steering_score", metric_value=entry["value"],
            metric_name="mean AUROC" if kind == "concept_detection" else "mean steering score (0-2)",
        ))
    return eval_results_to_model_index(model_name, results)


def fetch(repo_id_or_dir: str | Path, *, revision: str | None = None, token: str | None = None,
          patterns: Sequence[str] = tuple(RESULT_PATTERNS)) -> Path:
    """A local folder as is; a Hub repo id downloaded (the result's files only) at `revision`."""
    path = Path(repo_id_or_dir).expanduser()
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(repo_id_or_dir), revision=revision, allow_patterns=list(patterns),
                                  token=token))


# The result config schema: the JSON type of each field a result's config.json may hold. Values are taken as
# written, never coerced: a string where a list belongs would read as a list of its characters ("12" → [1, 2]).
FieldType = Literal["int", "str", "optional-str", "object", "int-list"]
_FIELD_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (lambda value: type(value) is int, "an integer"),
    "str": (lambda value: isinstance(value, str) and bool(value.strip()), "a non-empty string"),
    "optional-str": (lambda value: value is None or isinstance(value, str), "a string or null"),
    "object": (lambda value: isinstance(value, dict), "a JSON object"),
    "int-list": (lambda value: isinstance(value, list) and all(type(item) is int for item in value),
                 "a list of integers"),
}
# Every result's config.json: (type, required). The kinds add their own fields (a dictionary's layer, …).
RESULT_FIELDS: dict[str, tuple[FieldType, bool]] = {
    "format": ("str", True), "format_version": ("int", False), "method": ("str", True), "base_model": ("str", True),
    "base_model_revision": ("optional-str", False), "config": ("object", False),
}
FORMAT_VERSION = 1  # the newest result config layout this axbench reads


def check_record(path: Path, record: Mapping[str, Any], fields: Mapping[str, tuple[FieldType, bool]]) -> None:
    """Raise `DictionaryError` naming `path` and the field when a field of `fields` is missing (if required) or
    of the wrong type, or `format_version` is newer than this axbench reads. Unknown fields are left alone."""
    for name, (kind, required) in fields.items():
        if name not in record:
            if required:
                raise DictionaryError(f"{path}: field {name!r} is missing; re-save or re-download the result.")
            continue
        accepts, expected = _FIELD_TYPES[kind]
        if not accepts(record[name]):
            raise DictionaryError(f"{path}: field {name!r} must be {expected}, not {record[name]!r} "
                                  f"({type(record[name]).__name__}); the file was edited or not written by axbench: "
                                  "re-save or re-download the result.")
    version = record.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION or version < 1:
        raise DictionaryError(f"{path}: field 'format_version' is {version}, but this axbench reads versions 1.."
                              f"{FORMAT_VERSION}; upgrade axbench (or re-save the result).")


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """'name (k of n values)' for each floating-point tensor holding NaN or ±inf: weights that cannot be used."""
    found = []
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                found.append(f"{name!r} ({bad} of {tensor.numel()} values)")
    return found


def read_folder_config(root: Path, expected_format: str, written_by: str) -> dict[str, Any]:
    """`root/config.json` if it exists, parses, names `expected_format` and holds the shared fields with their
    types (`RESULT_FIELDS`); errors name the file, the field and what to do otherwise."""
    path = root / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root} has no {CONFIG_FILE}; pass a folder written by {written_by}.")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DictionaryError(f"{path} is not valid JSON ({error}); the folder is damaged: re-save it.") from None
    if not isinstance(record, dict) or record.get("format") != expected_format:
        found = record.get("format") if isinstance(record, dict) else None
        raise DictionaryError(f"{path} is not an {expected_format} config (format {found!r}); load the folder with "
                              "axmethods.results.load_result, which recognises every kind.")
    check_record(path, record, RESULT_FIELDS)
    return record


def folder_format(root: Path) -> str | None:
    """The `format` a folder's config.json names (None without one)."""
    try:
        record = json.loads((root / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record.get("format") if isinstance(record, dict) else None
