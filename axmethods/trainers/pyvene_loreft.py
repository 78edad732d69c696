"""One concept's LoReFT adapter as a pyvene intervention, for users of the pyvene / pyreft stack.

`ConceptAdapters` apply LoReFT with forward hooks (every concept of a batch at once). This builds the same
edit as pyvene's low-rank rotated-space machinery — `LowRankRotateLayer` under an orthogonal
parametrisation, a learned source `W h + b`, output `h + factor · (W h + b − R h) Rᵀ` (pyreft's
`LoreftIntervention`) — at the adapter's layers, loaded with the concept's trained values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from axmethods.dictionary import DictionaryError
from axmethods.models import TargetModel
from axmethods.trainers.artifacts import ConceptAdapters
from axmethods.trainers.parameterisations import LoReFTIntervention


def _intervention_class() -> type:
    # pyvene prints a banner and imports heavy modules on import: import it only when asked for.
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


def loreft_pyvene_model(adapters: ConceptAdapters, target: TargetModel, concept_id: int, factor: float = 1.0) -> Any:
    """A pyvene `IntervenableModel` applying concept `concept_id`'s LoReFT at every adapted layer.

    Run it with `unit_locations=None` to intervene at every position (the adapters' "all" positions).
    """
    import pyvene

    intervention = adapters.intervention
    if not isinstance(intervention, LoReFTIntervention):
        raise DictionaryError(f"only LoReFT adapters map to pyvene's rotated-space intervention; these are "
                              f"{adapters.parameterisation} (LoRA adapters export to peft instead).")
    index = int(adapters.rows([concept_id])[0])
    values = intervention.concept_parameters()
    cls = _intervention_class()
    representations = []
    for site, layer in enumerate(intervention.layers):
        module = cls(intervention.rank, factor, embed_dim=target.hidden_size)
        with torch.no_grad():
            module.rotate_layer.weight = values["rotation"][index, site]
            module.learned_source.weight.copy_(values["learned_source"][index, site])
            module.learned_source.bias.copy_(values["learned_bias"][index, site])
        representations.append({"layer": layer, "component": target.pyvene_component(layer),
                                "intervention": module.to(target.device)})
    model = pyvene.IntervenableModel(pyvene.IntervenableConfig(representations=representations), target.model)
    model.disable_model_gradients()
    return model
