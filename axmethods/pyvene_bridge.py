"""Our steering artefacts as pyvene interventions, for users of the pyvene / pyreft stack.

- `pyvene_intervention(dictionary, concept, factor, target)`: a published `SteeringDictionary` as a ready
  `IntervenableModel` that adds `factor × calibration[concept] × W[concept]` at the dictionary's layer (any kind
  of `axmethods.interventions`), the way AxBench's tutorial steers with its dictionaries.
- `pyvene_steering_model(target, layer, steering)`: any per-row `RowSteering` the same way (the hook path's
  reference in the tests).
- `loreft_pyvene_model(adapters, target, concept_id, factor)`: one concept's LoReFT adapter as pyvene's
  low-rank rotated-space machinery — `LowRankRotateLayer` under an orthogonal parametrisation, a learned source
  `W h + b`, output `h + factor · (W h + b − R h) Rᵀ` (pyreft's `LoreftIntervention`) — at the adapter's layers.

Each computes exactly what our forward hooks compute (`RowSteering.apply`, `ConceptAdapters.steer`); the tests
hold them to identical logits and generations. Run the models with `unit_locations=None` (every position, like
the hooks) and `intervene_on_prompt=True` for `generate`. pyvene is imported only when a function is called: it
prints a banner and imports heavy modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from axmethods.dictionary import DictionaryError, SteeringDictionary
from axmethods.interventions import RowSteering

if TYPE_CHECKING:
    from axmethods.models import TargetModel
    from axmethods.trainers.artifacts import ConceptAdapters


def pyvene_intervention(dictionary: SteeringDictionary, concept: int, factor: float, target: TargetModel, *,
                        kind: str = "addition") -> Any:
    """A pyvene `IntervenableModel` steering every row of a batch towards concept id `concept` with `factor`
    (α = factor × the concept's calibration), as `axmethods.interventions.steer` does with hooks."""
    dictionary.check_model(target)
    return pyvene_steering_model(target, dictionary.layer,
                                 RowSteering.from_dictionary(dictionary, [concept], [factor], kind))


def pyvene_steering_model(target: TargetModel, layer: int, steering: RowSteering) -> Any:
    """An `IntervenableModel` applying `steering` at `model.layers[layer].output` (every position); a one-row
    steering applies to every row of the batch."""
    intervention = _row_steering_class()(steering, embed_dim=target.hidden_size)
    return _intervenable([{"layer": layer, "component": target.pyvene_component(layer),
                           "intervention": intervention}], target)


def loreft_pyvene_model(adapters: ConceptAdapters, target: TargetModel, concept_id: int, factor: float = 1.0) -> Any:
    """A pyvene `IntervenableModel` applying concept `concept_id`'s LoReFT at every adapted layer."""
    from axmethods.trainers.parameterisations import LoReFTIntervention

    intervention = adapters.intervention
    if not isinstance(intervention, LoReFTIntervention):
        raise DictionaryError(f"only LoReFT adapters map to pyvene's rotated-space intervention; these are "
                              f"{adapters.parameterisation} (LoRA adapters export to peft instead).")
    index = int(adapters.rows([concept_id])[0])
    values = intervention.concept_parameters()
    cls = _loreft_class()
    representations = []
    for site, layer in enumerate(intervention.layers):
        module = cls(intervention.rank, factor, embed_dim=target.hidden_size)
        with torch.no_grad():
            module.rotate_layer.weight = values["rotation"][index, site]
            module.learned_source.weight.copy_(values["learned_source"][index, site])
            module.learned_source.bias.copy_(values["learned_bias"][index, site])
        representations.append({"layer": layer, "component": target.pyvene_component(layer),
                                "intervention": module.to(target.device)})
    return _intervenable(representations, target)


def _intervenable(representations: list[dict[str, Any]], target: TargetModel) -> Any:
    import pyvene

    model = pyvene.IntervenableModel(pyvene.IntervenableConfig(representations=representations), target.model)
    model.disable_model_gradients()
    return model


def _row_steering_class() -> type:
    import pyvene

    class PyveneRowSteering(pyvene.SourcelessIntervention, pyvene.DistributedRepresentationIntervention):
        """pyvene wrapper of `RowSteering.apply` (all positions: pyvene hands over the whole [B, T, d] output)."""

        def __init__(self, steering: RowSteering, **kwargs: Any) -> None:
            super().__init__(**kwargs, keep_last_dim=True)
            self.steering = steering

        def forward(self, base: torch.Tensor, source: Any = None, subspaces: Any = None) -> torch.Tensor:
            steering, rows = self.steering, base.shape[0]
            if steering.vectors.shape[0] == 1 != rows:  # one concept for the whole batch
                steering = RowSteering(steering.vectors.expand(rows, -1), steering.magnitudes.expand(rows),
                                       steering.kind)
            return steering.apply(base)

    return PyveneRowSteering


def _loreft_class() -> type:
    import pyvene
    from pyvene.models.layers import LowRankRotateLayer

    class PyveneLoReFT(pyvene.SourcelessIntervention, pyvene.TrainableIntervention,
                       pyvene.DistributedRepresentationIntervention):
        """LoReFT: h + factor · (W h + b − R h) Rᵀ, R with orthonormal columns."""

        def __init__(self, rank: int, factor: float = 1.0, **kwargs: Any) -> None:
            super().__init__(**kwargs, keep_last_dim=True)
            self.rotate_layer = orthogonal(LowRankRotateLayer(self.embed_dim, rank, init_orth=True))
            self.learned_source = nn.Linear(self.embed_dim, rank)
            self.factor = factor

        def forward(self, base: torch.Tensor, source: Any = None, subspaces: Any = None) -> torch.Tensor:
            rotated = self.rotate_layer(base.float())
            edit = self.learned_source(base.float()) - rotated
            return (base.float() + self.factor * edit @ self.rotate_layer.weight.T).to(base.dtype)

    return PyveneLoReFT
