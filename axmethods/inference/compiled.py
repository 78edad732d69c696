"""The compiled steering engine (`inference.engine: compiled`, `axbench infer steer --engine compiled`).

`CompiledDecoder` is a `sampling.Decoder`: transformers' `StaticCache` (fixed `[batch, heads, length, head_dim]`
tensors updated in place), the prompt prefilled eagerly, and every later one-token step through one
`torch.compile`d forward (CUDA graphs on GPU). Every batch is padded to the decoder's fixed batch size and cache
length, and the rows' addition steering (`factor × calibration × vector` at layer L, all positions) is read
from a fixed fp32 buffer `[batch, d]` by one `hooks.hook_output` hook — so one compiled graph serves every
batch of concepts and factors; nothing recompiles between batches or between runs of the same shape. The hook
is the interventions registry's `addition` (a `RowSteering` over the buffer with magnitude 1), the eager
loop's arithmetic.

The sampling is `sampling.sample`'s (per-row seeds, temperature, top-k, top-p): only the forward differs.
Greedy outputs equal the eager loop's; sampled ones too unless a uniform falls within float rounding of a
CDF boundary (the compiled kernels sum in another order, so logits may differ in the last bits).

Steerers that do not fit the delta buffer (adapters, fine-tuned weights, clamp / threshold / ablate,
`positions: after_prefix`, custom hooks) and models whose cache cannot be static here run eagerly, with
one logged warning line: their outputs are the same either way, only the speed differs, and a run mixes
methods (so an error would make the setting unusable). Steerers without any intervention (prompt steering,
the unsteered baseline) run compiled, without the hook.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from axmethods.contract import Steerer, UnsteeredBaseline
from axmethods.dictionary import DictionarySteerer
from axmethods.hooks import Call, hook_output
from axmethods.inference.sampling import Decoder, check_engine
from axmethods.interventions import RowSteering
from axmethods.methods.prompt import PromptSteerer
from axmethods.models import TargetModel, pad_token_id

logger = logging.getLogger(__name__)

CACHE_LENGTH_STEP = 64  # cache lengths are rounded up to this, so runs over similar prompts share one graph


# One compiled forward per model: dynamo keys its graphs on the function, so every decoder of a model shares them.
_COMPILED: weakref.WeakKeyDictionary[torch.nn.Module, Any] = weakref.WeakKeyDictionary()
# The model's current decoder: its static cache is the largest allocation (GBs for a 2B model at batch 256), so runs
# of the same shape reuse it and a new shape frees it first.
_DECODERS: weakref.WeakKeyDictionary[torch.nn.Module, CompiledDecoder] = weakref.WeakKeyDictionary()


def _compiled_forward(model: torch.nn.Module) -> Any:
    if model not in _COMPILED:
        on_gpu = next(model.parameters()).device.type == "cuda"
        compiled = torch.compile(model.__call__, mode="reduce-overhead" if on_gpu else None)

        def forward(**kwargs: Any) -> Any:
            # Dynamo does not guard on module hooks by default: a graph traced without the steering hook would
            # then serve a steered batch (or one traced with the hook at layer L a batch steered at another layer).
            with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
                return compiled(**kwargs)

        _COMPILED[model] = forward
    return _COMPILED[model]


class CompiledDecoder:
    """A `sampling.Decoder` with a static KV cache of `batch_size` rows × `max_cache_len` positions and a
    compiled one-token step; `steering(layer, deltas)` adds `deltas[b]` to row b's layer output."""

    def __init__(self, target: TargetModel, batch_size: int, max_cache_len: int) -> None:
        from transformers import StaticCache

        self.target, self.batch_size, self.max_cache_len = target, batch_size, max_cache_len
        self.cache = StaticCache(config=target.model.config, max_cache_len=max_cache_len)
        self.deltas = torch.zeros(batch_size, target.hidden_size, dtype=torch.float32, device=target.device)
        torch._dynamo.mark_static_address(self.deltas)  # updated in place between batches (CUDA graphs keep it)
        # α·v is precomputed into the buffer, so the registry's addition runs with α = 1 (1·x is exact).
        unit = torch.ones(batch_size, dtype=torch.float32, device=target.device)
        torch._dynamo.mark_static_address(unit)
        self._steering = RowSteering(self.deltas, unit)
        self.forward = _compiled_forward(target.model)
        self.on_gpu = target.device.type == "cuda"
        self.rows = 0

    def _add_deltas(self, hidden: torch.Tensor, _call: Call) -> torch.Tensor:
        # The eager hook's RowSteering.apply: h + 1·(α·v) in fp32, cast back — bit-identical to h + α·v there.
        return self._steering.apply(hidden)

    @contextmanager
    def steering(self, layer: int | None, deltas: torch.Tensor | None) -> Iterator[None]:
        """Inside the block, row b of the batches decoded gets `deltas[b]` added at decoder block `layer`'s output
        (every position); `layer=None`: no hook (the unsteered graph)."""
        self.deltas.zero_()
        if layer is None:
            yield
            return
        if deltas is None or deltas.ndim != 2 or deltas.shape[0] > self.batch_size:
            raise ValueError(f"steering deltas must be [rows ≤ {self.batch_size}, d]; got "
                             f"{None if deltas is None else tuple(deltas.shape)}")
        self.deltas[:len(deltas)].copy_(deltas)
        with hook_output(self.target.residual_module(layer), self._add_deltas):
            yield

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, steps: int) -> torch.Tensor:
        rows, length = input_ids.shape
        if rows > self.batch_size or length + steps > self.max_cache_len:
            raise ValueError(f"a batch of {rows} rows × {length} + {steps} positions does not fit the compiled "
                             f"decoder's {self.batch_size} × {self.max_cache_len}; build one that fits "
                             "(decoder_for does).")
        self.rows = rows
        # Pad rows repeat row 0 (a real prompt: an all-padding row would give NaN attention); nobody reads them.
        extra = self.batch_size - rows
        input_ids = torch.cat([input_ids, input_ids[:1].expand(extra, -1)])
        attention_mask = torch.cat([attention_mask, attention_mask[:1].expand(extra, -1)])
        # The static cache attends over all max_cache_len slots: the prompt's mask, then 1 for every new token
        # (causality hides the slots not written yet).
        self.attention_mask = attention_mask.new_ones(self.batch_size, self.max_cache_len)
        self.attention_mask[:, :length] = attention_mask
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        self.position_ids = position_ids[:, -1:]
        self.cache.reset()
        outputs = self.target.model(input_ids=input_ids, attention_mask=self.attention_mask, position_ids=position_ids,
                                    cache=self.cache, use_cache=True, logits_to_keep=1)
        return outputs.logits[:rows, -1]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        token = torch.cat([token, token.new_full((self.batch_size - self.rows,), pad_token_id(self.target))])
        self.position_ids = self.position_ids + 1
        if self.on_gpu:
            torch.compiler.cudagraph_mark_step_begin()
        outputs = self.forward(input_ids=token[:, None], attention_mask=self.attention_mask,
                               position_ids=self.position_ids, cache=self.cache, use_cache=True, logits_to_keep=1)
        # A copy: CUDA graphs overwrite their output buffer on the next step.
        return outputs.logits[:self.rows, -1].clone()


def cache_length(target: TargetModel, prompt_lengths: Sequence[int], steps: int) -> int | str:
    """The static cache length for prompts of these lengths and `steps` new tokens, or why it cannot be static."""
    config = target.model.config.get_text_config(decoder=True)
    if not getattr(target.model, "_can_compile_fullgraph", False):
        return f"{type(target.model).__name__} does not support a static cache"
    needed = max(prompt_lengths) + steps
    length = math.ceil(needed / CACHE_LENGTH_STEP) * CACHE_LENGTH_STEP
    window = getattr(config, "sliding_window", None)
    if window and "sliding_attention" in (getattr(config, "layer_types", None) or ["sliding_attention"]):
        if needed > window:  # a rolling window cache would index the padded mask differently from the eager loop
            return f"prompts + new tokens ({needed}) exceed the sliding window ({window})"
        length = min(length, window)
    return length


def decoder_for(target: TargetModel, batch_size: int, max_cache_len: int) -> CompiledDecoder:
    """The model's compiled decoder of this shape (reused, so its graph is too)."""
    decoder = _DECODERS.get(target.model)
    if decoder is None or decoder.target is not target or (decoder.batch_size, decoder.max_cache_len) != \
            (batch_size, max_cache_len):
        _DECODERS.pop(target.model, None)  # free the old cache before allocating the new one
        decoder = _DECODERS[target.model] = CompiledDecoder(target, batch_size, max_cache_len)
    return decoder


@dataclass
class CompiledSteering:
    """What `run_steering` uses with `engine: compiled`: a steerer's batches as deltas in the decoder's buffer."""

    steerer: Steerer
    decoder: CompiledDecoder
    layer: int | None  # None: the steerer has no intervention (prompt steering, the unsteered baseline)

    @property
    def method(self) -> str:
        return self.steerer.method

    def intervene(self, target: TargetModel, rows: pd.DataFrame) -> tuple[AbstractContextManager[Any], np.ndarray]:
        if self.layer is None:
            _, magnitudes = self.steerer.intervene(target, rows)  # a nullcontext: nothing is hooked
            return self.decoder.steering(None, None), magnitudes
        assert isinstance(self.steerer, DictionarySteerer)
        steering = self.steerer.row_steering(target, rows)
        deltas = steering.magnitudes[:, None] * steering.vectors  # α·v exactly as RowSteering.apply computes it
        return self.decoder.steering(self.layer, deltas.float()), steering.magnitudes.numpy()


def _unsupported(steerer: Steerer) -> str | None:
    """Why `steerer` cannot steer through the delta buffer, or None."""
    if type(steerer) in (UnsteeredBaseline, PromptSteerer):  # exact types: a subclass may hook something in
        return None
    if type(steerer) is not DictionarySteerer:
        return f"it steers with {type(steerer).__name__} (its own weights, adapters or hooks, not dictionary rows)"
    if steerer.kind != "addition" or steerer.positions != "all":
        return f"its intervention is {steerer.kind} at {steerer.positions} positions (the buffer adds at all)"
    return None


def steering_engine(engine: str, target: TargetModel, steerer: Steerer, prompt_lengths: Sequence[int],
                    steps: int, batch_size: int) -> tuple[Steerer | CompiledSteering, Decoder | None]:
    """What generates `steerer`'s rows with `engine`: (what intervenes per batch, the decoder; None = eager)."""
    if check_engine(engine) == "eager" or not prompt_lengths:
        return steerer, None
    reason = _unsupported(steerer)
    length = cache_length(target, prompt_lengths, steps)
    if reason is None and isinstance(length, str):
        reason = length
    if reason is not None:
        logger.warning("engine compiled: %s runs on the eager loop because %s (same outputs, eager speed).",
                       steerer.method, reason)
        return steerer, None
    assert isinstance(length, int)
    decoder = decoder_for(target, batch_size, length)  # every batch padded to batch_size: one shape, one graph
    layer = steerer.dictionary.layer if isinstance(steerer, DictionarySteerer) else None
    return CompiledSteering(steerer, decoder, layer), decoder

