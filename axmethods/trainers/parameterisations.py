"""Trainable concept interventions for preference / LM-objective steering, one parameter tensor for all concepts.

Every parameterisation holds the parameters of k concepts in tensors with a leading concept axis, so one
batch can train (or steer) a different concept on every row: row b uses concept `concepts[b]` with factor
`factors[b]`. Parameters are fp32 whatever the model's dtype. The vector's rows steer through the interventions
registry (`RowSteering` built from parameter slices: the same arithmetic, fp32 then cast back, as a dictionary
row at inference); LoRA / LoReFT are low-rank edits of a weight or a subspace, not a direction, so their hooks
compute their delta in fp32 and cast only the delta down.

| parameterisation | site                                  | h ← (row b, concept c, factor α)                      |
|------------------|---------------------------------------|--------------------------------------------------------|
| `vector`         | output of block L                     | h + (α + b_c)·w_c  (`addition`; steering drops b_c)    |
|                  | (`subtract`: RePS "null_it_out")      | h − ReLU(h·w_c + b_c)/‖w_c‖² · w_c (`ablate_positive`) |
| `lora`           | output of `self_attn.o_proj` in layers| o + α · s · B_c A_c x   (rsLoRA s = alpha/√r)          |
| `loreft`         | output of blocks in layers            | h + α · R_cᵀ(W_c h + b_c − R_c h), R_c orthonormal rows |

Subtraction for LoRA / LoReFT (and BiPO's vector) is the same intervention with −α.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from axdata.errors import InputError
from axmethods.hooks import Call, OutputFn, hook_output
from axmethods.interventions import RowSteering
from axmethods.models import TargetModel

PARAMETERISATIONS = ("vector", "lora", "loreft")


class InterventionSpecError(InputError):
    """A parameterisation setting does not fit the model (layer out of range, module missing)."""


@dataclass
class RowPlan:
    """What each row of a batch gets: its concept (index into the parameters), factor and whether it subtracts.

    `mask [B, T]` (optional) restricts the intervention to those positions of a full-sequence forward;
    `prefill_only` intervenes only on multi-token forwards (the prompt), not on decoding steps.
    """

    concepts: torch.Tensor  # [B] long
    factors: torch.Tensor  # [B] float
    subtract: torch.Tensor | None = None  # [B] bool: "null it out" rows (vector only)
    mask: torch.Tensor | None = None  # [B, T] bool


class ConceptIntervention(nn.Module):
    """Base: `applied(target, plan)` installs forward hooks that intervene row-wise while the block runs.

    A hook's new output is `steered(...)`: by default the site's output plus `delta` (LoRA, LoReFT); the vector
    overrides `steered` to apply the interventions registry's `RowSteering` instead.
    """

    parameterisation: ClassVar[str]

    def __init__(self, n_concepts: int, layers: Sequence[int]) -> None:
        super().__init__()
        self.n_concepts = n_concepts
        self.layers = [int(layer) for layer in layers]

    def sites(self, target: TargetModel) -> list[nn.Module]:
        return [target.residual_module(layer) for layer in self.layers]

    def delta(self, site: int, inputs: torch.Tensor, hidden: torch.Tensor, plan: RowPlan) -> torch.Tensor:
        """The fp32 change of the site's output `hidden` [B, T, d] (`inputs` = the site module's input)."""
        raise NotImplementedError

    def steered(self, site: int, inputs: torch.Tensor, hidden: torch.Tensor, plan: RowPlan) -> torch.Tensor:
        """The site's new output (`hidden`'s dtype): `hidden` + the fp32 `delta`, cast down, at `plan.mask`."""
        change = self.delta(site, inputs, hidden.float(), plan)
        if plan.mask is not None:
            change = change * plan.mask[..., None].to(change.dtype)
        return hidden + change.to(hidden.dtype)

    def spec(self) -> dict[str, Any]:
        """JSON-able description that rebuilds the module with `from_spec` (without its values)."""
        return {"parameterisation": self.parameterisation, "n_concepts": self.n_concepts, "layers": self.layers}

    @contextmanager
    def applied(self, target: TargetModel, plan: RowPlan, *, prefill_only: bool = False) -> Iterator[RowPlan]:
        """Hook every site (through `hooks.hook_output`) to add `delta` while the block runs."""
        def at_site(index: int) -> OutputFn:
            def intervene(hidden: torch.Tensor, call: Call) -> torch.Tensor | None:
                if prefill_only and hidden.shape[1] == 1:
                    return None
                if hidden.shape[0] != plan.concepts.shape[0]:
                    raise InterventionSpecError(
                        f"the batch has {hidden.shape[0]} rows but the plan {plan.concepts.shape[0]}; build one "
                        "RowPlan per batch.")
                return self.steered(index, call.args[0] if call.args else hidden, hidden, plan)
            return intervene

        with ExitStack() as stack:
            for index, module in enumerate(self.sites(target)):
                stack.enter_context(hook_output(module, at_site(index)))
            yield plan

    def concept_parameters(self) -> dict[str, torch.Tensor]:
        """The values to save, every tensor with the concept axis first."""
        return {name: tensor.detach().float().cpu() for name, tensor in self.state_dict().items()}


class VectorIntervention(ConceptIntervention):
    """A rank-1 steering vector per concept at one layer (RePS / BiPO / "Lang." vector)."""

    parameterisation = "vector"

    def __init__(self, n_concepts: int, layers: Sequence[int], hidden_size: int, *, dropout: float = 0.0,
                 init_std: float = 0.01, generator: torch.Generator | None = None, train_bias: bool = True) -> None:
        super().__init__(n_concepts, layers)
        if len(self.layers) != 1:
            raise InterventionSpecError(f"a steering vector sits at one layer; got layers {self.layers}")
        self.weight = nn.Parameter(torch.randn(n_concepts, hidden_size, generator=generator) * init_std)
        self.bias = nn.Parameter(torch.zeros(n_concepts), requires_grad=train_bias)
        self.dropout = dropout

    def row_steering(self, plan: RowPlan) -> tuple[RowSteering, RowSteering | None]:
        """The rows' `addition` (α = factor + b_c) and, when some rows subtract, their `ablate_positive` (α = b_c:
        RePS's "null_it_out"), from the (dropped-out) parameter rows, so gradients reach weight and bias."""
        w = F.dropout(self.weight[plan.concepts], self.dropout, self.training)  # [B, d]
        b = self.bias[plan.concepts]
        add = RowSteering(w, plan.factors.to(w) + b)
        if plan.subtract is None or not bool(plan.subtract.any()):
            return add, None
        return add, RowSteering(w, b, "ablate_positive")

    def steered(self, site: int, inputs: torch.Tensor, hidden: torch.Tensor, plan: RowPlan) -> torch.Tensor:
        add, null = self.row_steering(plan)
        steered = add.apply(hidden, plan.mask)
        if null is None or plan.subtract is None:
            return steered
        return torch.where(plan.subtract.to(hidden.device)[:, None, None], null.apply(hidden, plan.mask), steered)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "hidden_size": self.weight.shape[1], "dropout": self.dropout}


class LoRAIntervention(ConceptIntervention):
    """Per-concept LoRA on `self_attn.o_proj` of several layers; the factor scales the low-rank delta."""

    parameterisation = "lora"

    def __init__(self, n_concepts: int, layers: Sequence[int], in_features: int, out_features: int, *,
                 rank: int = 4, alpha: float = 32.0, dropout: float = 0.0, rslora: bool = True,
                 target_module: str = "self_attn.o_proj", module_paths: Sequence[str] | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(n_concepts, layers)
        self.rank, self.alpha, self.dropout, self.rslora = rank, alpha, dropout, rslora
        self.target_module = target_module
        # The adapted modules' full names in the model (what peft's files key by), e.g. model.layers.3.self_attn.o_proj.
        self.module_paths = list(module_paths) if module_paths is not None else None
        n = len(self.layers)
        # peft's init: A kaiming-uniform(a=√5) → U(±1/√in), B zeros (the adapter starts as the identity).
        bound = 1 / math.sqrt(in_features)
        self.lora_A = nn.Parameter((torch.rand(n_concepts, n, rank, in_features, generator=generator) * 2 - 1) * bound)
        self.lora_B = nn.Parameter(torch.zeros(n_concepts, n, out_features, rank))

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def sites(self, target: TargetModel) -> list[nn.Module]:
        return [_block_submodule(target, layer, self.target_module) for layer in self.layers]

    def delta(self, site: int, inputs: torch.Tensor, hidden: torch.Tensor, plan: RowPlan) -> torch.Tensor:
        x = F.dropout(inputs.float(), self.dropout, self.training)
        a = self.lora_A[plan.concepts, site]  # [B, r, in]
        b = self.lora_B[plan.concepts, site]  # [B, out, r]
        low = torch.einsum("bti,bri->btr", x, a)
        return torch.einsum("btr,bor->bto", low, b) * (self.scaling * plan.factors.to(x))[:, None, None]

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "in_features": self.lora_A.shape[-1], "out_features": self.lora_B.shape[-2],
                "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "rslora": self.rslora,
                "target_module": self.target_module, "module_paths": self.module_paths}


class LoReFTIntervention(ConceptIntervention):
    """Per-concept LoReFT (Wu et al. 2024) at the output of several blocks: edits in an orthonormal r-dim subspace."""

    parameterisation = "loreft"

    def __init__(self, n_concepts: int, layers: Sequence[int], hidden_size: int, *, rank: int = 4,
                 dropout: float = 0.0, generator: torch.Generator | None = None) -> None:
        super().__init__(n_concepts, layers)
        n = len(self.layers)
        self.rank, self.dropout = rank, dropout
        rotate = nn.Module()
        rotate.weight = nn.Parameter(torch.linalg.qr(torch.randn(n_concepts * n, hidden_size, rank,
                                                                 generator=generator)).Q)
        self.rotate = orthogonal(rotate, "weight")  # [k·n, d, r] with orthonormal columns
        self.learned_source = nn.Parameter(torch.randn(n_concepts, n, rank, hidden_size, generator=generator)
                                           / math.sqrt(hidden_size))
        self.learned_bias = nn.Parameter(torch.zeros(n_concepts, n, rank))

    def rotations(self) -> torch.Tensor:
        """[k, n_layers, d, r] with orthonormal columns (R_cᵀ)."""
        weight = self.rotate.weight
        return weight.reshape(self.n_concepts, len(self.layers), *weight.shape[1:])

    def delta(self, site: int, inputs: torch.Tensor, hidden: torch.Tensor, plan: RowPlan) -> torch.Tensor:
        r = self.rotations()[plan.concepts, site]  # [B, d, r]
        w = self.learned_source[plan.concepts, site]  # [B, r, d]
        bias = self.learned_bias[plan.concepts, site]  # [B, r]
        edit = torch.einsum("btd,brd->btr", hidden, w) + bias[:, None, :] - torch.einsum("btd,bdr->btr", hidden, r)
        edit = F.dropout(edit, self.dropout, self.training)
        return torch.einsum("btr,bdr->btd", edit, r) * plan.factors.to(hidden)[:, None, None]

    def concept_parameters(self) -> dict[str, torch.Tensor]:
        return {"rotation": self.rotations().detach().float().cpu(),
                "learned_source": self.learned_source.detach().float().cpu(),
                "learned_bias": self.learned_bias.detach().float().cpu()}

    def load_concept_parameters(self, values: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.rotate.weight = values["rotation"].reshape(-1, *values["rotation"].shape[2:]).to(
                self.learned_source.device)
            self.learned_source.copy_(values["learned_source"])
            self.learned_bias.copy_(values["learned_bias"])

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "hidden_size": self.learned_source.shape[-1], "rank": self.rank,
                "dropout": self.dropout}


def _block_submodule(target: TargetModel, layer: int, path: str) -> nn.Module:
    try:
        return target.residual_module(layer).get_submodule(path)
    except AttributeError:
        raise InterventionSpecError(
            f"decoder blocks of {target.model_id} have no submodule {path!r}; set "
            "lora_target_module to the attention output projection's path inside a block.") from None


def lora_module_paths(target: TargetModel, layers: Sequence[int], target_module: str) -> list[str]:
    return [f"{target.residual_module_path(layer)}.{target_module}" for layer in layers]


def build_intervention(spec: dict[str, Any]) -> ConceptIntervention:
    """An (untrained) intervention from `ConceptIntervention.spec()`; load values with `load_values`."""
    spec = dict(spec)
    kind = spec.pop("parameterisation")
    if kind == "vector":
        return VectorIntervention(spec["n_concepts"], spec["layers"], spec["hidden_size"], dropout=spec["dropout"])
    if kind == "lora":
        return LoRAIntervention(spec["n_concepts"], spec["layers"], spec["in_features"], spec["out_features"],
                                rank=spec["rank"], alpha=spec["alpha"], dropout=spec["dropout"], rslora=spec["rslora"],
                                target_module=spec["target_module"], module_paths=spec.get("module_paths"))
    if kind == "loreft":
        return LoReFTIntervention(spec["n_concepts"], spec["layers"], spec["hidden_size"], rank=spec["rank"],
                                  dropout=spec["dropout"])
    raise InterventionSpecError(f"unknown parameterisation {kind!r}; use one of {', '.join(PARAMETERISATIONS)}")


def load_values(intervention: ConceptIntervention, values: dict[str, torch.Tensor]) -> ConceptIntervention:
    if isinstance(intervention, LoReFTIntervention):
        intervention.load_concept_parameters(values)
    else:
        intervention.load_state_dict(values)
    return intervention


def new_intervention(parameterisation: str, target: TargetModel, n_concepts: int, layers: Sequence[int], *,
                     rank: int, dropout: float, lora_alpha: float, lora_target_module: str, init_std: float,
                     train_bias: bool, generator: torch.Generator) -> ConceptIntervention:
    """A freshly initialised intervention of `parameterisation` sized for `target`."""
    layers = [target.validate_layer(layer) for layer in layers]
    if parameterisation == "vector":
        return VectorIntervention(n_concepts, layers, target.hidden_size, dropout=dropout, init_std=init_std,
                                  generator=generator, train_bias=train_bias)
    if parameterisation == "lora":
        projection = _block_submodule(target, layers[0], lora_target_module)
        return LoRAIntervention(n_concepts, layers, projection.in_features, projection.out_features, rank=rank,
                                alpha=lora_alpha, dropout=dropout, target_module=lora_target_module,
                                module_paths=lora_module_paths(target, layers, lora_target_module),
                                generator=generator)
    if parameterisation == "loreft":
        return LoReFTIntervention(n_concepts, layers, target.hidden_size, rank=rank, dropout=dropout,
                                  generator=generator)
    raise InterventionSpecError(f"unknown parameterisation {parameterisation!r}; use one of "
                                f"{', '.join(PARAMETERISATIONS)}")
