"""The one KV-cache decode loop (steered generation and the in-process chat backend), where every row draws
from its own seeded random stream and may have its own `SamplingConfig`.

A row's tokens depend only on its prompt, its steering and its seed — not on which rows share its batch,
the batch size or the padding — because each row's uniforms come from its own `torch.Generator` and a
token is drawn by inverse-CDF lookup of one uniform in the row's (sorted, top-k- and top-p-truncated)
distribution.
That makes re-runs and resumed runs reproduce the same generations, which `generate(do_sample=True)`
under one global seed cannot. The loop is ours rather than `generate()` for the same reason: per-row seeds
and per-row sampling settings.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from axdata.errors import InputError
from axmethods.models import TargetModel, pad_batch, pad_token_id

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class SamplingConfig:
    """AxBench's steering generation: temperature 1.0, 128 new tokens, top-k 50, no nucleus truncation.

    AxBench calls HF `generate(do_sample=True, temperature=1.0)`, whose default generation config keeps the 50
    most likely tokens (`top_k=50`); `top_k=0` samples from the full vocabulary.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 50  # 0 = no top-k truncation
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise InputError("sampling needs max_new_tokens ≥ 1, temperature ≥ 0, top_k ≥ 0 and 0 < top_p ≤ 1; "
                             f"got {self}")


def stop_token_ids(target: TargetModel) -> list[int]:
    """Every id that ends a turn: the generation config's and the tokenizer's eos, and the chat template's
    end-of-turn token (Gemma's <end_of_turn>), which is not always among the eos ids."""
    configured = target.model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if target.tokenizer.eos_token_id is not None:
        ids.add(target.tokenizer.eos_token_id)
    suffix_ids = target.encode(target.turn_suffix)
    # GGUF tokenizers list such control tokens as added tokens but not always as special ones.
    control_ids = set(target.tokenizer.all_special_ids) | set(target.tokenizer.get_added_vocab().values())
    if suffix_ids and suffix_ids[0] in control_ids:
        ids.add(suffix_ids[0])
    return sorted(ids)


def draw(logits: torch.Tensor, uniforms: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """One token per row from `logits [B, V]` using the rows' uniforms `[B]` in [0, 1)."""
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    # Stable sort: equal probabilities keep their id order whatever the batch, so the lookup is reproducible.
    sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True, stable=True)
    if 0 < config.top_k < sorted_probs.shape[-1]:
        # HF's TopKLogitsWarper keeps every token tied with the k-th probability; so do we.
        kth = sorted_probs[:, config.top_k - 1:config.top_k]
        sorted_probs = sorted_probs.masked_fill(sorted_probs < kth, 0.0)
    if config.top_p < 1:
        # Nucleus of what top-k kept, renormalised (HF applies top-p after top-k on the remaining tokens).
        cumulative = sorted_probs.cumsum(dim=-1)
        before = cumulative - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= config.top_p * cumulative[:, -1:], 0.0)
    cdf = sorted_probs.cumsum(dim=-1)
    target_mass = uniforms.to(cdf.device)[:, None] * cdf[:, -1:]
    position = torch.searchsorted(cdf, target_mass, right=True).clamp_max(cdf.shape[-1] - 1)
    return sorted_ids.gather(-1, position).squeeze(-1)


# `inference.engine` / `--engine`: which decoder `run_steering` uses (axmethods.inference.compiled for "compiled").
ENGINES: tuple[str, ...] = ("eager", "compiled")


def check_engine(name: str) -> str:
    """`name` if it is an engine, else a ValueError naming the choices."""
    if name not in ENGINES:
        raise InputError(f"engine {name!r} is unknown; use eager (the default decode loop) or compiled (a static KV "
                         "cache and a torch.compile'd decode step).")
    return name


class Decoder(Protocol):
    """Runs the model for `sample`: `start` the left-padded prompts, then `step` one new token per row; both return
    the next-token logits `[B, V]`. Rows stay in order; the decoder owns its cache, mask and positions."""

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, steps: int) -> torch.Tensor: ...

    def step(self, token: torch.Tensor) -> torch.Tensor: ...


class DynamicCacheDecoder:
    """The eager decoder: transformers' growing `DynamicCache`, a mask that grows by one column per step and
    padding-aware `position_ids` (a steering hook sees the same `position_ids` as in a full forward)."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        # transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name warns).
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, steps: int) -> torch.Tensor:
        self.attention_mask = attention_mask
        self.position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=self.position_ids,
                             use_cache=True, logits_to_keep=1)
        self.cache = outputs[self.cache_arg]
        return outputs.logits[:, -1]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(len(token), 1)], dim=-1)
        self.position_ids = self.position_ids[:, -1:] + 1
        outputs = self.model(input_ids=token[:, None], attention_mask=self.attention_mask,
                             position_ids=self.position_ids, use_cache=True, logits_to_keep=1,
                             **{self.cache_arg: self.cache})
        self.cache = outputs[self.cache_arg]
        return outputs.logits[:, -1]


@torch.inference_mode()
def sample(target: TargetModel, prompts: Sequence[Sequence[int]], seeds: Sequence[int],
           config: SamplingConfig | Sequence[SamplingConfig], decoder: Decoder | None = None) -> list[list[int]]:
    """New token ids per prompt (without the prompt, cut after the first end-of-turn token).

    `config` is one for every row or one per row (then a row stops after its own `max_new_tokens`). Run it
    inside `interventions.steering_hooks` to steer: the hook sees the prompt and every new token, with
    padding-aware `position_ids`. `decoder` runs the model (default: an eager `DynamicCacheDecoder`; the
    compiled engine passes its `CompiledDecoder`); the sampling is the same whichever runs it.
    """
    configs = [config] * len(prompts) if isinstance(config, SamplingConfig) else list(config)
    if not len(prompts) == len(seeds) == len(configs):
        raise ValueError(f"{len(prompts)} prompts, {len(seeds)} seeds and {len(configs)} configs; give one per row")
    device = target.device
    pad = pad_token_id(target)
    input_ids, attention_mask = pad_batch(prompts, pad, side="left")
    budgets = torch.tensor([c.max_new_tokens for c in configs])
    steps = int(budgets.max())
    uniforms = torch.zeros(len(prompts), steps)
    for row, (seed, budget) in enumerate(zip(seeds, budgets.tolist())):
        uniforms[row, :budget] = torch.rand(budget, generator=torch.Generator().manual_seed(seed))
    groups: dict[SamplingConfig, list[int]] = {}
    for row, row_config in enumerate(configs):
        groups.setdefault(row_config, []).append(row)
    stop = torch.tensor(stop_token_ids(target), device=device)
    decoder = decoder or DynamicCacheDecoder(target.model)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    generated = []
    logits = decoder.start(input_ids.to(device), attention_mask.to(device), steps)
    for step in range(steps):
        token = _draw_rows(logits, uniforms[:, step], groups).masked_fill(finished, pad)
        generated.append(token)
        finished |= torch.isin(token, stop) | (budgets.to(device) <= step + 1)
        if bool(finished.all()):
            break
        # Finished rows keep decoding a pad nobody reads: cheaper than reshaping the cache.
        logits = decoder.step(token)
    tokens = torch.stack(generated, dim=1).cpu()
    # Keep each row up to and including its first end-of-turn token, at most its budget; the rest is padding.
    ended = torch.isin(tokens, stop.cpu())
    lengths = torch.where(ended.any(-1), ended.int().argmax(-1) + 1, torch.tensor(tokens.shape[1]))
    return [row[:length].tolist() for row, length in zip(tokens, torch.minimum(lengths, budgets).tolist())]


def _draw_rows(logits: torch.Tensor, uniforms: torch.Tensor, groups: dict[SamplingConfig, list[int]]
               ) -> torch.Tensor:
    """`draw` for each group of rows sharing a config (one call when the whole batch shares one)."""
    if len(groups) == 1:
        return draw(logits, uniforms, next(iter(groups)))
    token = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    for row_config, rows in groups.items():
        index = torch.tensor(rows, device=logits.device)
        token[index] = draw(logits[index], uniforms[index], row_config)
    return token
