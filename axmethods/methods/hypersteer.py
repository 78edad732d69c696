"""`HyperSteerResult`: a trained HyperSteer hypernetwork, and how it steers (spec §3.14).

On disk (a `FolderResult`): `config.json` (format `axbench-hypernetwork`: base model, layer, the network's shape,
trained and held-out concepts, reference prompts), `tensors.safetensors` (every parameter but the embeddings,
which are the target's own, frozen, re-attached on load), `concepts.jsonl` (the trained concepts), `README.md`.

Two ways to steer with it:
- `steerer()` (what `axbench run` uses; the paper's protocol): Δ per generated row, from that row's concept
  description and its own prompt;
- `to_dictionary(concepts, target)` (`axbench dictionary from-hypernet`): a rank-1 `SteeringDictionary` for ANY
  concept list, seen or not. A dictionary row cannot depend on the prompt it will be applied to, so each row is
  Δ averaged over fixed reference prompts: the first 32 distinct train instructions (kept in the result), or,
  for a result that has none, `NEUTRAL_PROMPTS`. Its factors are HyperSteer's grid, calibration fixed to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from axdata.concepts import Concept
from axmethods.contract import DictionaryError, FolderResult
from axmethods.factors import HYPERSTEER_FACTORS
from axmethods.models import TargetModel, pad_batch, pad_token_id

if TYPE_CHECKING:
    from typing_extensions import Self

    from axmethods.dictionary import SteeringDictionary
    from axmethods.methods.hypernet import HyperNetwork

FORMAT = "axbench-hypernetwork"
# Generic instructions (no concept in them) for results saved without train instructions.
NEUTRAL_PROMPTS = (
    "Tell me about your day.", "Write a short paragraph about a city you like.", "Explain how a bicycle works.",
    "Give me three tips for cooking rice.", "Describe the weather in spring.", "What is a good way to learn a new "
    "language?", "Write a short story about a friendly neighbour.", "Summarise why people enjoy music.",
)


# How the network meets the target model, shared by training (`trainers.hypersteer`) and steering: the prompt's
# residuals, the description's tokens, and Δ.
def prompt_memory(target: TargetModel, layer: int, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's `hidden_states[layer]` (block layer−1's output; the embeddings for layer 0) over left-padded
    `prompts`, and their attention mask: the keys / values of the cross-attention (no grad)."""
    from axmethods.hooks import layer_outputs

    ids, mask = pad_batch(prompts, pad_token_id(target), side="left")
    ids, mask = ids.to(target.device), mask.to(target.device)
    if layer == 0:
        with torch.no_grad():
            states = target.model.get_input_embeddings()(ids)
    else:
        states = layer_outputs(target, [layer - 1], ids, mask)[layer - 1]
    return states.float().clone(), mask  # clone: out of inference mode, usable in the autograd graph


def concept_tokens(target: TargetModel, concepts: Sequence[Concept], max_length: int) -> list[list[int]]:
    """Each description tokenised as the reference does (the tokenizer's own special tokens, e.g. Gemma's <bos>)."""
    return [target.tokenizer(c.concept)["input_ids"][-max_length:] or [pad_token_id(target)] for c in concepts]


def deltas(network: HyperNetwork, target: TargetModel, layer: int, concept_ids: Sequence[Sequence[int]],
           prompts: Sequence[Sequence[int]]) -> torch.Tensor:
    """Δ [B, d] for row b's concept tokens and prompt."""
    memory, memory_mask = prompt_memory(target, layer, prompts)
    ids, mask = pad_batch(concept_ids, pad_token_id(target), side="left")
    return network(ids.to(memory.device), mask.to(memory.device), memory, memory_mask)


@dataclass
class HyperSteerResult(FolderResult):
    """A hypernetwork H(concept, prompt) → Δ for block `layer` of `base_model`."""

    FORMAT: ClassVar[str] = FORMAT
    KIND: ClassVar[str] = "hypernetwork"
    CARD: ClassVar[str] = "hypersteer_card.md"
    steers: ClassVar[bool] = True

    concepts: list[Concept]
    held_out: list[Concept]
    method: str
    base_model: str
    layer: int
    shape: dict[str, Any]
    state: dict[str, torch.Tensor]
    reference_prompts: list[str] = field(default_factory=list)
    base_model_revision: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    _network: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_hidden_layers(self) -> int:
        return int(self.shape["num_hidden_layers"])

    @property
    def steering_factors(self) -> list[float]:
        return [float(f) for f in self.config.get("steering_factors", HYPERSTEER_FACTORS)]

    def record(self) -> dict[str, Any]:
        return {"layer": self.layer, "num_hidden_layers": self.num_hidden_layers, "shape": self.shape,
                "held_out_concepts": [c.to_metadata() for c in self.held_out],
                "reference_prompts": self.reference_prompts}

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.state

    @classmethod
    def from_record(cls, record: dict[str, Any], concepts: list[Concept], tensors: dict[str, torch.Tensor]) -> Self:
        try:
            held = [Concept(int(c["concept_id"]), str(c["concept"]), c.get("ref")) for c in record["held_out_concepts"]]
            return cls(concepts=concepts, held_out=held, method=record["method"], base_model=record["base_model"],
                       layer=int(record["layer"]), shape=dict(record["shape"]), state=tensors,
                       reference_prompts=list(record.get("reference_prompts") or []),
                       base_model_revision=record.get("base_model_revision"), config=record.get("config", {}))
        except (KeyError, TypeError, ValueError) as error:
            raise DictionaryError(f"the hypernetwork's config.json lacks or mangles {error}; re-save it with "
                                  "HyperSteerResult.save_pretrained.") from None

    def check_model(self, target: TargetModel) -> None:
        if target.hidden_size != int(self.shape["hidden_size"]) or not 0 <= self.layer < target.num_layers:
            raise DictionaryError(f"The {self.method} hypernetwork steers layer {self.layer} of a model with hidden "
                                  f"size {self.shape['hidden_size']} ({self.base_model}); {target.spec!r} has hidden "
                                  f"size {target.hidden_size} and {target.num_layers} layers. Use --model "
                                  f"{self.base_model}.")
        super().check_model(target)

    def network(self, target: TargetModel) -> HyperNetwork:
        """The network on `target`'s device, with `target`'s embeddings attached (built once per result)."""
        from torch import nn

        from axmethods.methods.hypernet import HypernetShape, HyperNetwork

        if self._network is None or self._network[0] is not target:
            self.check_model(target)
            embed = nn.Embedding.from_pretrained(target.model.get_input_embeddings().weight.detach(), freeze=True)
            network = HyperNetwork(HypernetShape(**self.shape), embed)
            network.load_trained_state(self.state)
            self._network = (target, network.to(target.device).eval())
        return self._network[1]

    @torch.no_grad()
    def deltas(self, target: TargetModel, concepts: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
        """Δ [B, d] (fp32, CPU) of row b's concept description and (chat-templated, as text) prompt."""
        limit = int(self.config.get("max_concept_length", 64))
        tokens = concept_tokens(target, [Concept(0, text) for text in concepts], limit)
        prompt_limit = int(self.config.get("max_prompt_length", 256))
        encoded = [target.encode(prompt)[-prompt_limit:] for prompt in prompts]
        return deltas(self.network(target), target, self.layer, tokens, encoded).float().cpu()

    @torch.no_grad()
    def to_dictionary(self, concepts: Sequence[Concept], target: TargetModel, *,
                      prompts: Sequence[str] | None = None, batch_size: int = 16) -> SteeringDictionary:
        """One row per concept: Δ averaged over `prompts` (default: the reference prompts, see the module doc).

        The prompts' residuals are computed once per batch and shared by every concept."""
        from axmethods.dictionary import SteeringDictionary

        if not concepts:
            raise DictionaryError("to_dictionary needs at least one concept.")
        texts = list(prompts or self.reference_prompts or NEUTRAL_PROMPTS)
        limit = int(self.config.get("max_prompt_length", 256))
        encoded = [target.encode(target.format_prompt(text))[-limit:] for text in texts]
        tokens = concept_tokens(target, concepts, int(self.config.get("max_concept_length", 64)))
        network = self.network(target)
        sums = torch.zeros(len(concepts), target.hidden_size)
        for start in range(0, len(encoded), batch_size):
            memory, memory_mask = prompt_memory(target, self.layer, encoded[start:start + batch_size])
            for row, ids in enumerate(tokens):
                concept_ids, concept_mask = pad_batch([ids] * len(memory), pad_token_id(target), side="left")
                sums[row] += network(concept_ids.to(memory.device), concept_mask.to(memory.device), memory,
                                     memory_mask).float().sum(0).cpu()
        rows = list(sums / len(encoded))
        source = "given" if prompts else "reference" if self.reference_prompts else "neutral"
        return SteeringDictionary(
            weight=torch.stack(rows), concepts=list(concepts), layer=self.layer,
            hook_module=target.residual_module_path(self.layer), base_model=self.base_model, method=self.method,
            base_model_revision=self.base_model_revision, calibration=torch.ones(len(concepts)),
            config={"steering_factors": self.steering_factors, "calibration": "fixed",
                    "hypernetwork": {"config_hash": self.config_hash, "num_hidden_layers": self.num_hidden_layers,
                                     "trained_on": self.concept_ids, "held_out": [c.concept_id for c in self.held_out]},
                    "delta": f"mean over {len(texts)} {source} prompts"},
            calibration_info={"source": "fixed", "value": 1.0,
                              "reason": "HyperSteer adds factor × Δ (spec §3.14): Δ carries its own magnitude"})

    def steerer(self, *, kind: str = "addition", positions: str = "all") -> HyperSteerSteerer:
        if kind != "addition":
            raise DictionaryError(f"HyperSteer steers by addition (h + factor·Δ); intervention {kind!r} is not "
                                  "available for it. Use intervention: addition.")
        return HyperSteerSteerer(self, positions=positions)

    def model_card(self, *, datasets: Sequence[str] = (), eval_results: Sequence[Any] = (),
                   repo_id: str | None = None) -> str:
        from axdata.cards import render_card
        from axmethods.contract import card_metadata

        return render_card(self.CARD, metadata=card_metadata(self, datasets, eval_results, repo_id,
                                                             tags=["hypernetwork", "hypersteer"]),
                           result=self, repo_id=repo_id or "DIR_OR_REPO", datasets=list(datasets),
                           examples=self.concepts[:10])


@dataclass
class HyperSteerSteerer:
    """The paper's protocol: row b gets factor × H(its concept, its own prompt) at every position of block L."""

    result: HyperSteerResult
    positions: str = "all"
    factor_free: bool = False

    @property
    def method(self) -> str:
        return self.result.method

    @property
    def factors(self) -> list[float]:
        return self.result.steering_factors

    def provenance(self) -> dict[str, Any]:
        return {"dictionary_config_hash": self.result.config_hash, "layer": self.result.layer,
                "intervention": "addition", "positions": self.positions, "delta": "per prompt"}

    def instructions(self, prompts: pd.DataFrame) -> list[str]:
        return prompts["original_prompt"].tolist()

    def intervene(self, target: TargetModel, rows: pd.DataFrame) -> tuple[AbstractContextManager[Any], np.ndarray]:
        from axmethods.interventions import RowSteering, steering_hooks

        delta = self.result.deltas(target, rows["concept"].astype(str).tolist(), rows["prompt"].tolist())
        factors = torch.tensor(rows["factor"].to_numpy(dtype=np.float32))
        steering = RowSteering(delta, factors)
        return steering_hooks(target, self.result.layer, steering, positions=self.positions), factors.numpy()

