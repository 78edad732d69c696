"""Training rank-1 interventions through the language-model loss (ReFT-r1, SSV), all concepts jointly.

Each batch row is one (concept, example) pair; a forward hook on block L adds that row's concept
intervention to the residual stream at every non-prefix position of prompt + response, and the loss is
the cross-entropy of the response tokens (the prompt is masked with −100). The parameter is one fp32
[k, d] matrix whatever the model's dtype: the hook computes in fp32 and casts only the added delta
down, so AdamW updates fp32 master weights (AxBench cast the intervention to bf16 — spec §9.10).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub.utils import tqdm

from axmethods.methods.base import TrainingSet
from axmethods.methods.joint import (
    concept_batches,
    linear_decay,
    normalise_,
    optimizer_steps,
    prepare_gradient_,
)
from axmethods.models import TargetModel

logger = logging.getLogger(__name__)

# (hidden [B, T, d] fp32, concept rows of the weight [B, d], intervened positions [B, T] bool)
#   → (delta [B, T, d] fp32, auxiliary loss per row [B] or None)
Intervene = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class LMSchedule:
    batch_size: int
    epochs: int
    lr: float
    weight_decay: float
    gradient_accumulation_steps: int
    max_grad_norm: float
    unit_norm: bool
    aux_coefficient: float  # the auxiliary loss is ramped in: coefficient × step / total_steps
    max_length: int | None


@dataclass
class EncodedExamples:
    """Token ids of prompt + response per row and where the response starts."""

    ids: list[list[int]]
    prompt_lengths: list[int]


def encode_lm(target: TargetModel, data: TrainingSet, max_length: int | None) -> EncodedExamples:
    """AxBench's LM view: chat-templated user turn + generation prompt, then the raw response (no EOS)."""
    ids, prompt_lengths = [], []
    for instruction, output in zip(data.instructions, data.outputs):
        prompt = target.encode(target.format_prompt(instruction))
        ids.append((prompt + target.encode(output))[:max_length])
        prompt_lengths.append(len(prompt))
    return EncodedExamples(ids, prompt_lengths)


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """No gradients for the model's own weights during training; their flags are restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def intervention_hook(module: torch.nn.Module, apply: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    def hook(_module: torch.nn.Module, _inputs: object, output: object) -> object:
        if isinstance(output, tuple):
            return (apply(output[0]), *output[1:])
        return apply(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def train_lm_rank1(target: TargetModel, layer: int, data: TrainingSet, weight: torch.nn.Parameter,
                   intervene: Intervene, schedule: LMSchedule, generator: torch.Generator,
                   loss_history: list[float], desc: str) -> torch.Tensor:
    """Train `weight` [k, d] (fp32) for `data`'s k concepts; returns it detached on CPU."""
    encoded = encode_lm(target, data, schedule.max_length)
    device = target.device
    optimizer = torch.optim.AdamW([weight], lr=schedule.lr, weight_decay=schedule.weight_decay)
    total = optimizer_steps(data.members, schedule.batch_size, schedule.epochs, schedule.gradient_accumulation_steps)
    micro_total = optimizer_steps(data.members, schedule.batch_size, schedule.epochs, 1)
    scheduler = linear_decay(optimizer, total)
    pad = target.tokenizer.pad_token_id if target.tokenizer.pad_token_id is not None else 0
    module = target.residual_module(layer)
    step, running = 0, 0.0
    state: dict[str, torch.Tensor | None] = {}

    def apply(hidden: torch.Tensor) -> torch.Tensor:
        delta, aux = intervene(hidden.float(), weight[state["concept"]], state["mask"])
        state["aux"] = aux
        return hidden + delta.to(hidden.dtype)

    batches = concept_batches(data.members, schedule.batch_size, schedule.epochs, generator)
    with frozen(target.model), intervention_hook(module, apply), \
            tqdm(total=micro_total, desc=desc, unit="batch", disable=micro_total < 2) as bar:
        for micro, batch in enumerate(batches, 1):
            concept, slot = (batch >= 0).nonzero(as_tuple=True)
            rows = batch[concept, slot].tolist()
            input_ids, attention_mask, labels, mask = _pad(encoded, rows, target.prefix_length, pad)
            state["concept"], state["mask"] = concept.to(device), mask.to(device)
            logits = target.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                  use_cache=False).logits
            token_loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:].to(device),
                                         ignore_index=-100, reduction="none")
            per_concept = _per_concept_mean(token_loss.sum(1), (labels[:, 1:] != -100).sum(1).to(device),
                                            state["concept"], data.n_concepts)
            loss = per_concept.sum()
            aux = state["aux"]
            if aux is not None:
                ramp = step / max(total, 1)
                rows_per = torch.zeros(data.n_concepts, device=device).index_add(
                    0, state["concept"], torch.ones_like(aux))
                aux_per = torch.zeros(data.n_concepts, device=device).index_add(0, state["concept"], aux)
                loss = loss + schedule.aux_coefficient * ramp * (aux_per / rows_per.clamp(min=1)).sum()
            (loss / schedule.gradient_accumulation_steps).backward()
            running += float(per_concept.detach().sum()) / data.n_concepts / schedule.gradient_accumulation_steps
            bar.update(1)
            if micro % schedule.gradient_accumulation_steps == 0 or micro == micro_total:
                prepare_gradient_(weight, schedule.max_grad_norm, schedule.unit_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if schedule.unit_norm:
                    normalise_(weight)
                loss_history.append(running)
                running, step = 0.0, step + 1
    return weight.detach().float().cpu()


def _pad(encoded: EncodedExamples, rows: list[int], prefix_length: int, pad: int
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, labels (response tokens only) and intervened positions."""
    lengths = torch.tensor([len(encoded.ids[r]) for r in rows])
    width = int(lengths.max())
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, :lengths[i]] = torch.tensor(encoded.ids[r])
    position = torch.arange(width)[None]
    attention_mask = (position < lengths[:, None]).long()
    prompt = torch.tensor([encoded.prompt_lengths[r] for r in rows])
    labels = input_ids.masked_fill((position < prompt[:, None]) | (attention_mask == 0), -100)
    intervene = (position >= prefix_length) & (attention_mask == 1)
    return input_ids, attention_mask, labels, intervene


def _per_concept_mean(sums: torch.Tensor, counts: torch.Tensor, concept: torch.Tensor, n: int) -> torch.Tensor:
    """Token-mean loss of each concept over its rows in the batch (0 for a concept without rows)."""
    total = torch.zeros(n, device=sums.device).index_add(0, concept, sums)
    tokens = torch.zeros(n, device=sums.device).index_add(0, concept, counts.float())
    return total / tokens.clamp(min=1)
