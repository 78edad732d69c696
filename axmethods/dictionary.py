"""The steering dictionary: one row per concept, the artefact every method produces.

`weight[i]` is concept `concepts[i]`'s direction in the residual stream read at `hook_module`
(the output of decoder block `layer`). Detection scores are `activation(h @ weight.T + bias)`;
steering adds `factor * calibration[i] * steering_weight[i]` (`steering_weight` defaults to `weight`;
SAEs read with the encoder and write with the decoder). `calibration` is the per-concept maximum
activation that turns a unitless steering factor into a magnitude — stored with the dictionary, never
silently 1.0. `steerer()` gives a `DictionarySteerer`, how steering inference applies the rows (the interventions
registry's arithmetic, `axmethods.interventions`, which is why this module sits above it).

On disk (and in a Hub model repo) a dictionary is a layer folder plus a card::

    <root>/l<layer>/weights.safetensors   weight [n, d], and bias / calibration [n], steering_weight [n, d],
                                          concept_ids [n] (row i's concept, checked against concepts.jsonl)
    <root>/l<layer>/concepts.jsonl        AxBench metadata.jsonl lines, row i = concept i
    <root>/l<layer>/config.json           layer, hook site, base model + revision, method, config (+ hash)
    <root>/README.md                      model card rendered from hub_cards/dictionary_card.md

Loading reads safetensors and JSON only: nothing is unpickled and no remote code runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from axdata.cards import render_card
from axdata.concepts import Concept, ConceptFileError, load_concepts, write_concepts_jsonl
from axdata.hashing import content_hash
from axdata.io import atomic_path, atomic_write_json
from axmethods.contract import (
    CARD_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    RESULT_FIELDS,
    ConceptResult,
    DictionaryError,
    FieldType,
    card_metadata,
    check_record,
    nonfinite_tensors,
)
from axmethods.interventions import Positions, RowSteering, steering_hooks

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from axmethods.models import TargetModel

logger = logging.getLogger(__name__)

FORMAT = "axbench-steering-dictionary"
WEIGHTS_FILE = "weights.safetensors"
CONCEPTS_FILE = "concepts.jsonl"
_MATRICES = ("weight", "steering_weight")
# output_score: each row's output score (axmethods.output_score), absent in dictionaries never scored.
_VECTORS = ("bias", "calibration", "output_score")
# The concept id of each weight row, stored with the weights so that a reordered concepts.jsonl is caught.
_ROW_IDS = "concept_ids"
_LAYER_FOLDER = re.compile(r"l(\d+)")
# A dictionary's config.json beyond the shared result fields (the result config schema, axmethods.contract).
CONFIG_FIELDS: dict[str, tuple[FieldType, bool]] = {
    **RESULT_FIELDS, "layer": ("int", True), "hook_module": ("str", True), "n_concepts": ("int", False),
    "hidden_size": ("int", False), "activation": ("str", False), "config_hash": ("str", False),
    "calibration_info": ("object", False), "output_score_info": ("object", False),
    "unsteered_concept_ids": ("int-list", False),
}

# Detection read-outs applied to `h @ W.T + b`: ReFT-r1 / SSV use ReLU, mean-difference and probe methods
# use the raw projection. Names, not callables, so the choice is stored in config.json.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda scores: scores,
    "relu": torch.relu,
}


@dataclass
class SteeringDictionary(ConceptResult):
    """A rank-1 result: `weight[i]` is concept i's direction (see the module docstring)."""

    FORMAT: ClassVar[str] = FORMAT
    KIND: ClassVar[str] = "dictionary"
    detector: ClassVar[str] = "residual"
    steers: ClassVar[bool] = True

    weight: torch.Tensor
    concepts: list[Concept]
    layer: int
    hook_module: str
    base_model: str
    method: str
    base_model_revision: str | None = None
    bias: torch.Tensor | None = None
    calibration: torch.Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)
    activation: str = "identity"
    steering_weight: torch.Tensor | None = None
    calibration_info: dict[str, Any] = field(default_factory=dict)
    output_score: torch.Tensor | None = None
    output_score_info: dict[str, Any] = field(default_factory=dict)
    # Concepts the dictionary detects but does not steer (e.g. sae-filtered: no output feature); steering skips them.
    unsteered_concept_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.weight.ndim != 2:
            raise DictionaryError(f"weight must be [n_concepts, hidden_size], got shape {tuple(self.weight.shape)}")
        n = self.weight.shape[0]
        if len(self.concepts) != n:
            raise DictionaryError(f"{n} weight rows but {len(self.concepts)} concepts; they must match one to one")
        ids = [c.concept_id for c in self.concepts]
        if len(set(ids)) != len(ids):
            raise DictionaryError("concept_ids must be unique within a dictionary")
        for name in _VECTORS:
            vector = getattr(self, name)
            if vector is not None and tuple(vector.shape) != (n,):
                raise DictionaryError(f"{name} must have shape ({n},), got {tuple(vector.shape)}")
        if self.steering_weight is not None and self.steering_weight.shape != self.weight.shape:
            raise DictionaryError(f"steering_weight must have weight's shape {tuple(self.weight.shape)}, got "
                                  f"{tuple(self.steering_weight.shape)}")
        self.unsteered_concept_ids = tuple(int(cid) for cid in self.unsteered_concept_ids)
        unknown = sorted(set(self.unsteered_concept_ids) - set(ids))
        if unknown:
            raise DictionaryError(f"unsteered_concept_ids {unknown[:10]} are not concepts of this dictionary; list only "
                                  "ids of its concepts")
        if self.activation not in ACTIVATIONS:
            raise DictionaryError(f"activation {self.activation!r} is unknown; use one of {', '.join(ACTIVATIONS)}")
        if self.layer < 0:
            raise DictionaryError(f"layer must be ≥ 0, got {self.layer}")
        for name in ("weight", "steering_weight", *_VECTORS):
            tensor = getattr(self, name)
            if tensor is not None and not bool(torch.isfinite(tensor).all()):
                rows = torch.nonzero(~torch.isfinite(tensor.reshape(n, -1)).all(dim=1)).flatten().tolist()
                raise DictionaryError(f"{name} holds NaN or infinite values in the rows of concepts "
                                      f"{[ids[row] for row in rows[:10]]}; the method diverged or the file is "
                                      "damaged — retrain (e.g. a lower learning rate) or re-download it")
        self.weight = self.weight.detach().float().contiguous()
        for name in (*_VECTORS, "steering_weight"):
            tensor = getattr(self, name)
            if tensor is not None:
                setattr(self, name, tensor.detach().float().contiguous())

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1]

    @property
    def calibration_fixed(self) -> bool:
        """Whether the calibration is set by the method (RePS-family vectors: 1), not by latent inference."""
        return self.config.get("calibration") == "fixed"

    @property
    def config_hash(self) -> str:
        return content_hash({"method": self.method, "config": self.config})

    @property
    def layer_folder(self) -> str:
        return f"l{self.layer}"

    @property
    def steering_vectors(self) -> torch.Tensor:
        """The rows steering adds ([n, d]): `steering_weight` where the method has one, else `weight`."""
        return self.weight if self.steering_weight is None else self.steering_weight

    @property
    def steered_concept_ids(self) -> frozenset[int] | None:
        """The concepts steering generates (None: every concept); the rest are detection-only rows."""
        if not self.unsteered_concept_ids:
            return None
        return frozenset(self.concept_ids) - frozenset(self.unsteered_concept_ids)

    @property
    def needs_calibration(self) -> bool:
        """Whether it steers with factor × calibration but has no calibration yet (latent inference computes it)."""
        return self.calibration is None

    def steerer(self, *, kind: str = "addition", positions: str = "all") -> DictionarySteerer:
        """Steering with one row per concept: α = factor × calibration, intervention `kind`."""
        return DictionarySteerer(self, kind=kind, positions=positions)

    def activate(self, scores: torch.Tensor) -> torch.Tensor:
        """This method's detection read-out applied to raw projections `h @ W.T + b`."""
        return ACTIVATIONS[self.activation](scores)

    def require_calibration(self) -> None:
        """Refuse to steer an uncalibrated dictionary instead of assuming a magnitude of 1.0."""
        if self.calibration is None:
            raise DictionaryError(
                f"The {self.method} dictionary has no calibration (per-concept max activation). Run latent "
                "inference first (`axbench infer latent`) or calibrate it explicitly."
            )

    def steering_magnitudes(self, concept_ids: Sequence[int], factors: Sequence[float]) -> torch.Tensor:
        """`factor × calibration` per row; refuses an uncalibrated dictionary instead of assuming 1.0."""
        self.require_calibration()
        rows = self.rows(concept_ids)
        return torch.as_tensor(factors, dtype=torch.float32) * self.calibration[rows]

    def with_calibration(self, calibration: torch.Tensor, info: Mapping[str, Any]) -> SteeringDictionary:
        """A copy carrying `calibration` ([n], in row order) and a record of where it came from."""
        return dataclasses.replace(self, calibration=calibration, calibration_info=dict(info))

    def with_output_scores(self, scores: torch.Tensor, info: Mapping[str, Any]) -> SteeringDictionary:
        """A copy carrying each row's output score ([n], axmethods.output_score) and how it was measured."""
        return dataclasses.replace(self, output_score=scores, output_score_info=dict(info))

    def check_model(self, target: TargetModel) -> None:
        """Raise DictionaryError unless this dictionary can be read and written on `target`."""
        if target.hidden_size != self.hidden_size:
            raise DictionaryError(
                f"The {self.method} dictionary has hidden size {self.hidden_size} but {target.spec!r} has "
                f"{target.hidden_size}; use a dictionary trained on {target.spec!r} (this one is for "
                f"{self.base_model!r})."
            )
        if not 0 <= self.layer < target.num_layers:
            raise DictionaryError(
                f"The {self.method} dictionary reads layer {self.layer} but {target.spec!r} has layers "
                f"0..{target.num_layers - 1}; use a dictionary trained on {target.spec!r}."
            )
        if self.base_model not in (target.model_id, target.spec):
            logger.warning("The %s dictionary was trained on %r and is used with %r (same hidden size)",
                           self.method, self.base_model, target.model_id)

    # ----- files -------------------------------------------------------------------------------------

    def write_files(self, root: Path) -> Path:
        """`<root>/l<layer>/{weights.safetensors, concepts.jsonl, config.json}`; returns the layer folder."""
        folder = root / self.layer_folder
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name) for name in (*_MATRICES, *_VECTORS) if getattr(self, name) is not None}
        tensors[_ROW_IDS] = torch.tensor(self.concept_ids, dtype=torch.int64)
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "method": self.method})
        write_concepts_jsonl(folder / CONCEPTS_FILE, self.concepts)
        atomic_write_json(folder / CONFIG_FILE, self._config_record())
        return folder

    @classmethod
    def load(cls, directory: str | Path, *, expect_model: TargetModel | None = None,
             layer: int | None = None) -> SteeringDictionary:
        """Read a dictionary from a layer folder, or from a root holding `l<layer>/` folders.

        A root with several layer folders needs `layer`. With `expect_model`, the dictionary must fit it.
        """
        folder = _layer_folder(Path(directory), layer)
        config = _read_config(folder)
        tensors = _read_tensors(folder)
        concepts = _read_concepts(folder)
        row_ids = tensors.pop(_ROW_IDS, None)  # absent in dictionaries saved before it was recorded
        try:
            dictionary = cls(
                weight=tensors["weight"], concepts=concepts, layer=config["layer"],
                hook_module=config["hook_module"], base_model=config["base_model"], method=config["method"],
                base_model_revision=config.get("base_model_revision"), bias=tensors.get("bias"),
                calibration=tensors.get("calibration"), config=config.get("config", {}),
                activation=config.get("activation", "identity"), steering_weight=tensors.get("steering_weight"),
                calibration_info=config.get("calibration_info", {}), output_score=tensors.get("output_score"),
                output_score_info=config.get("output_score_info", {}),
                unsteered_concept_ids=tuple(config.get("unsteered_concept_ids", ())),
            )
        except DictionaryError as error:
            raise DictionaryError(f"{folder}: {error}. Fix: re-save the dictionary from its method.") from None
        if row_ids is not None and row_ids.tolist() != dictionary.concept_ids:
            raise DictionaryError(
                f"{folder / CONCEPTS_FILE} lists concept ids {dictionary.concept_ids[:10]}… but the rows of "
                f"{WEIGHTS_FILE} belong to {row_ids.tolist()[:10]}…: the files were edited or come from different "
                "dictionaries. Re-save or re-download the whole layer folder.")
        declared = (config.get("n_concepts"), config.get("hidden_size"))
        if declared != (dictionary.n_concepts, dictionary.hidden_size):
            raise DictionaryError(
                f"{folder / CONFIG_FILE} declares {declared[0]} concepts × hidden size {declared[1]} but "
                f"{WEIGHTS_FILE} holds {dictionary.n_concepts} × {dictionary.hidden_size}; the files come from "
                "different dictionaries. Re-save or re-download the whole layer folder."
            )
        if expect_model is not None:
            dictionary.check_model(expect_model)
        return dictionary

    @classmethod
    def download_patterns(cls, *, layer: int | None = None, **_: Any) -> list[str]:
        """Only the needed layer folder (every layer when `layer` is None), the card and the results."""
        return [f"l{layer}/*" if layer is not None else "l*/*", CARD_FILE, ".eval_results/*"]

    def push_patterns(self) -> list[str]:
        """Other layer folders already in the repo are kept; stale files of this layer folder are deleted."""
        return [f"{self.layer_folder}/*"]

    def model_card(self, *, datasets: Sequence[str] = (), eval_results: Sequence[Mapping[str, Any]] = (),
                   repo_id: str | None = None) -> str:
        metadata = card_metadata(self, datasets, eval_results, repo_id or f"{self.method} ({self.layer_folder})",
                                 tags=["interpretability", "concept-detection"])
        return render_card(
            "dictionary_card.md", metadata=metadata, dictionary=self, repo_id=repo_id or "<repo_id>",
            datasets=list(datasets), eval_results=list(eval_results), examples=self.concepts[:10],
        )

    def _config_record(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "layer": self.layer,
            "hook_module": self.hook_module,
            "base_model": self.base_model,
            "base_model_revision": self.base_model_revision,
            "n_concepts": self.n_concepts,
            "hidden_size": self.hidden_size,
            "activation": self.activation,
            "config": self.config,
            "config_hash": self.config_hash,
            "calibration_info": self.calibration_info,
            **({"output_score_info": self.output_score_info} if self.output_score is not None else {}),
            **({"unsteered_concept_ids": list(self.unsteered_concept_ids)} if self.unsteered_concept_ids else {}),
        }


@dataclass
class DictionarySteerer:
    """Steering with a dictionary row per concept: α = factor × calibration, `kind` of intervention."""

    dictionary: SteeringDictionary
    kind: str = "addition"
    positions: Positions = "all"
    factor_free: bool = False  # every factor is a different magnitude
    _checked: Any = field(default=None, init=False, repr=False)

    @property
    def method(self) -> str:
        return self.dictionary.method

    @property
    def steered_concept_ids(self) -> frozenset[int] | None:
        return self.dictionary.steered_concept_ids

    @property
    def factors(self) -> list[float] | None:
        """The method's own factor grid (RePS-family vectors carry one), or None for the run's grid."""
        grid = self.dictionary.config.get("steering_factors")
        return [float(f) for f in grid] if grid else None

    def provenance(self) -> dict[str, Any]:
        return {"dictionary_config_hash": self.dictionary.config_hash, "layer": self.dictionary.layer,
                "hook_module": self.dictionary.hook_module, "intervention": self.kind, "positions": self.positions,
                "calibration_info": self.dictionary.calibration_info}

    def instructions(self, prompts: pd.DataFrame) -> list[str]:
        return prompts["original_prompt"].tolist()

    def row_steering(self, target: TargetModel, rows: pd.DataFrame) -> RowSteering:
        """The batch's vectors and magnitudes (`intervene` hooks them in; the compiled engine adds them itself)."""
        if self._checked is not target:  # once per target: the check warns on a base-model mismatch
            self.dictionary.check_model(target)
            self._checked = target
        return RowSteering.from_dictionary(self.dictionary, rows["concept_id"].tolist(), rows["factor"].tolist(),
                                           self.kind)

    def intervene(self, target: TargetModel, rows: pd.DataFrame) -> tuple[AbstractContextManager[Any], np.ndarray]:
        steering = self.row_steering(target, rows)
        return steering_hooks(target, self.dictionary.layer, steering, positions=self.positions), \
            steering.magnitudes.numpy()


def _layer_folder(directory: Path, layer: int | None) -> Path:
    if not directory.is_dir():
        raise DictionaryError(f"{directory}: no such dictionary directory; check the path.")
    if (directory / CONFIG_FILE).is_file() and (directory / WEIGHTS_FILE).is_file():
        match = _LAYER_FOLDER.fullmatch(directory.name)
        if layer is not None and match and int(match.group(1)) != layer:
            raise DictionaryError(f"{directory} holds layer {match.group(1)}, not the requested layer {layer}.")
        return directory
    folders = sorted((p for p in directory.iterdir() if p.is_dir() and _LAYER_FOLDER.fullmatch(p.name)),
                     key=lambda p: int(p.name[1:]))
    if layer is not None:
        wanted = directory / f"l{layer}"
        if wanted not in folders:
            raise DictionaryError(f"{directory} has no layer-{layer} folder (layers present: "
                                  f"{', '.join(p.name for p in folders) or 'none'}); pick one of those.")
        return wanted
    if len(folders) == 1:
        return folders[0]
    if not folders:
        raise DictionaryError(f"{directory} holds no dictionary: expected l<layer>/{{{WEIGHTS_FILE}, {CONCEPTS_FILE}, "
                              f"{CONFIG_FILE}}}. Point at a directory written by SteeringDictionary.save.")
    raise DictionaryError(f"{directory} holds several layers ({', '.join(p.name for p in folders)}); pass layer=N "
                          "(--layer N) to pick one.")


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DictionaryError(f"{path} is missing; a dictionary layer folder needs {CONFIG_FILE}.") from None
    except json.JSONDecodeError as error:
        raise DictionaryError(f"{path} is not valid JSON ({error.msg}); re-download or re-save it.") from None
    except UnicodeDecodeError as error:
        raise DictionaryError(f"{path} is not UTF-8 text ({error.reason}); re-download or re-save it.") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise DictionaryError(f"{path} is not an axbench steering-dictionary config (format {FORMAT!r} expected); "
                              "convert AxBench weight.pt files with `axbench dictionary convert-axbench`.")
    check_record(path, config, CONFIG_FIELDS)
    named = _LAYER_FOLDER.fullmatch(folder.name)
    if named and int(named.group(1)) != config["layer"]:
        # The folder name is what --layer and the Hub's download patterns pick: a mismatch would steer another layer.
        raise DictionaryError(f"{path}: field 'layer' is {config['layer']} but the folder is {folder.name}/; the "
                              "files were moved or edited: re-save or re-download the dictionary.")
    settings = config.get("config") or {}
    if settings.get("detector") in ("text", "target-model", "none") or settings.get("steering") in ("prompt", "none"):
        # Before results were typed, BoW and the prompt baselines were saved as dictionaries; read as one they
        # would detect or steer wrongly (a zero vector instead of a prompt), so they are refused.
        raise DictionaryError(f"{path} holds a {config['method']} result in the old dictionary layout; retrain it "
                              f"(`axbench train {config['method']} …`, or `axbench run CONFIG --force`).")
    return config


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise DictionaryError(f"{path} is missing; a dictionary layer folder needs {WEIGHTS_FILE}.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise DictionaryError(f"{path} is not a readable safetensors file ({error}); re-download or re-save it.") from None
    unknown = sorted(set(tensors) - {*_MATRICES, *_VECTORS, _ROW_IDS})
    if "weight" not in tensors or unknown:
        raise DictionaryError(f"{path} holds tensors {sorted(tensors)}; expected 'weight' and optionally "
                              f"{', '.join(_VECTORS + _MATRICES[1:])}. Re-save the dictionary.")
    nonfinite = nonfinite_tensors(tensors)
    if nonfinite:  # refused here, naming the file, not later as a method that "diverged" mid-run
        raise DictionaryError(f"{path}: tensor {', '.join(nonfinite)} holds NaN or infinite values; the method "
                              "diverged or the file is damaged: retrain (e.g. a lower learning rate) or re-download it.")
    return tensors


def _read_concepts(folder: Path) -> list[Concept]:
    path = folder / CONCEPTS_FILE
    try:
        by_id = {concept.concept_id: concept for concept in load_concepts(path, dedupe=False)}
    except ConceptFileError as error:
        raise DictionaryError(str(error)) from None
    # load_concepts sorts by id, but row i of the weights is line i of the file.
    order = [json.loads(line).get("concept_id") for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    if None in order:
        raise DictionaryError(f"{path}: every line needs a concept_id (row i of the weights is line i).")
    return [by_id[concept_id] for concept_id in order]
