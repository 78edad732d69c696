"""Training the steering family (RePS, BiPO, Lang., LoReFT, LoRA, SFT): what each trains on, chunk by chunk.

`axmethods.registry.MethodSpec.train` calls these for the family's methods; their presets live in the registry.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pandas as pd

from axdata.concepts import Concept
from axmethods.dictionary import SteeringDictionary
from axmethods.models import TargetModel
from axmethods.trainers.artifacts import ConceptAdapters

logger = logging.getLogger(__name__)


class FamilyMethod(Protocol):
    """What these functions read of a method: its name and training kind (`axmethods.registry.MethodSpec` is one;
    the registry sits above the trainers, so it is named here by what it has, not imported)."""

    @property
    def name(self) -> str: ...

    @property
    def training(self) -> str: ...


def training_frame(method: FamilyMethod, target: TargetModel, concepts: Sequence[Concept],
                   read_split: Callable[[str], pd.DataFrame | None], config: Any, *,
                   notify: Callable[[str], None] | None = None) -> pd.DataFrame:
    """What `method` (with its `config`) trains on. `read_split(split)` gives a split, or None if absent.

    SFT methods: the train split. RePS-family methods: the preference split; without one, the train positives
    (LM objective: they are all it needs) or pairs of each positive with the target model's greedy answer.
    """
    from axmethods.trainers.data import positives_frame, preference_frame

    train = read_split("train")
    if method.training == "sft":
        if train is None:
            raise FileNotFoundError(f"{method.name} trains on the train split, and the dataset has none.")
        return train
    preference = read_split("preference")
    if preference is not None:
        return preference
    if train is None:
        raise FileNotFoundError(f"{method.name} trains on the preference split (or the train split's positives), "
                                "and the dataset has neither.")
    if config.loss_type == "lm":
        return positives_frame(train, concepts)
    (notify or logger.info)(f"{method.name}: the dataset has no preference split; pairing each train positive "
                            f"with {target.model_id}'s greedy answer")
    return preference_frame(target, train, concepts)


def train_family_method(method: FamilyMethod, target: TargetModel, data: pd.DataFrame,
                        concepts: Sequence[Concept], config: Any, *, progress: Callable[[str], None] | None = None
                        ) -> SteeringDictionary | ConceptAdapters:
    """Train `method` with `config` (`method.settings(...)`) on `data` (`training_frame`).

    Concepts beyond `concepts_per_chunk` are trained chunk by chunk and their results joined.
    """
    if method.training == "sft":
        from axmethods.trainers.sft import train_sft

        return train_sft(target, data, concepts, config, method=method.name)
    from axmethods.trainers.reps_trainer import RePSTrainer

    results = []
    size = config.concepts_per_chunk
    for start in range(0, len(concepts), size):
        chunk = list(concepts)[start:start + size]
        trainer = RePSTrainer(model=target, args=config, train_dataset=data, concepts=chunk, method_name=method.name)
        trainer.train()
        results.append(trainer.export())
        if progress:
            progress(f"{method.name}: trained concepts {start + 1}–{start + len(chunk)} of {len(concepts)}")
    return results[0] if len(results) == 1 else join_results(results)


def join_results(results: Sequence[SteeringDictionary | ConceptAdapters]) -> SteeringDictionary | ConceptAdapters:
    """One result from the per-chunk results of one method (same layer / parameterisation)."""
    import torch

    first = results[0]
    concepts = [c for r in results for c in r.concepts]
    if isinstance(first, SteeringDictionary):
        return dataclasses.replace(first, weight=torch.cat([r.weight for r in results]), concepts=concepts,
                                   calibration=torch.ones(len(concepts)))
    from axmethods.trainers.parameterisations import build_intervention, load_values

    spec = {**first.intervention.spec(), "n_concepts": len(concepts)}
    values = {key: torch.cat([r.intervention.concept_parameters()[key] for r in results])
              for key in first.intervention.concept_parameters()}
    return dataclasses.replace(first, intervention=load_values(build_intervention(spec), values), concepts=concepts)
