"""Residual-stream activations at layer L over chat transcripts, packed, with the forward stopped at L.

The read-out site is the output of decoder block L (`TargetModel.residual_module(L)`), the same site
steering writes to. Every activation pass:
- skips the first `prefix_length` tokens (the chat template's shared prefix, AxBench's
  `get_prefix_length`) and the padding, so only content tokens are returned;
- stops the forward right after block L (`hooks.layer_outputs`): later blocks and the LM head
  would only cost time;
- batches texts of similar length together (sorted by length) and restores the caller's order.

Results are packed: `TokenActivations.values` is [total_tokens, d] and `offsets` [n_texts + 1] marks
where each text's tokens start, so per-text math is segment math (index_add / scatter), not a list.

`ActivationCollector` keeps the activations of texts marked `keep` (AxBench's shared negatives, used by
every concept) keyed by a hash of the text, so they are computed once per run, not once per concept.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import torch
from huggingface_hub.utils import tqdm

from axdata.errors import InputError
from axmethods.hooks import layer_outputs
from axmethods.models import TargetModel, dtype_named, pad_batch, pad_token_id

logger = logging.getLogger(__name__)


@dataclass
class TokenActivations:
    """Per-token activations of several texts, packed: text i owns rows offsets[i]:offsets[i + 1]."""

    values: torch.Tensor  # [total_tokens, d]
    offsets: torch.Tensor  # [n_texts + 1], int64, offsets[0] == 0

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.offsets.ndim != 1 or int(self.offsets[-1]) != self.values.shape[0]:
            raise ValueError(
                f"TokenActivations: values {tuple(self.values.shape)} and offsets ending at "
                f"{int(self.offsets[-1]) if len(self.offsets) else None} disagree; offsets[-1] must equal the "
                "number of token rows."
            )

    @property
    def n_texts(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets.diff()

    @property
    def text_index(self) -> torch.Tensor:
        """[total_tokens]: which text each token row belongs to."""
        return torch.repeat_interleave(torch.arange(self.n_texts, device=self.values.device),
                                       self.lengths.to(self.values.device))

    def text(self, i: int) -> torch.Tensor:
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def select(self, indices: torch.Tensor | Sequence[int]) -> TokenActivations:
        """The texts at `indices` (in that order, repeats allowed), packed anew."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[indices]
        offsets = torch.zeros(len(indices) + 1, dtype=torch.long)
        offsets[1:] = lengths.cumsum(0)
        # Row r of the result is row (start of its text + its position within the text) of self.
        starts = torch.repeat_interleave(self.offsets[indices], lengths)
        within = torch.arange(int(offsets[-1])) - torch.repeat_interleave(offsets[:-1], lengths)
        return TokenActivations(self.values[(starts + within).to(self.values.device)], offsets)

    def segment_sum(self) -> torch.Tensor:
        """[n_texts, d] fp32 sum of each text's token activations."""
        out = torch.zeros(self.n_texts, self.values.shape[1], dtype=torch.float32, device=self.values.device)
        return out.index_add_(0, self.text_index, self.values.float())

    def max_pool(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-text max of per-token `scores` [total_tokens, k] → [n_texts, k] (−inf for empty texts)."""
        out = torch.full((self.n_texts, scores.shape[1]), float("-inf"), dtype=scores.dtype, device=scores.device)
        index = self.text_index.to(scores.device)[:, None].expand_as(scores)
        return out.scatter_reduce(0, index, scores, reduce="amax", include_self=True)

    @staticmethod
    def cat(parts: Sequence[TokenActivations]) -> TokenActivations:
        lengths = torch.cat([part.lengths for part in parts])
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        offsets[1:] = lengths.cumsum(0)
        return TokenActivations(torch.cat([part.values for part in parts]), offsets)


@dataclass
class TextSums:
    """Per-text fp32 token sums [n_texts, d] and token counts [n_texts]: what `TokenActivations.segment_sum()`
    and `.lengths` give, without the tokens (`ActivationCollector.collect_sums`)."""

    sums: torch.Tensor
    lengths: torch.Tensor

    def segment_sum(self) -> torch.Tensor:
        return self.sums


@cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (avx512_bf16 / AMX); without them bf16 is slower
    than fp32 (measured ~2x slower on avx512-without-bf16 cores)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ActivationCollector:
    """Computes layer-`layer` token activations of chat-formatted texts, caching the `keep` ones.

    `dtype=None` runs the model in its own dtype; another dtype runs under `torch.autocast` (loading
    the model in that dtype is faster: autocast re-casts weights every batch). `max_length` truncates
    each text to its first `max_length` tokens (prefix included) before the prefix is dropped.
    `keep_all` caches every text (one collector shared by several methods of a run).
    `storage_dtype` (default: `dtype`, else the model's) is the dtype results are kept in.
    `forward_texts` counts the texts that went through the model (cache hits do not).
    """

    def __init__(self, target: TargetModel, layer: int, *, batch_size: int = 16, dtype: torch.dtype | None = None,
                 max_length: int | None = None, storage_dtype: torch.dtype | None = None,
                 keep_all: bool = False, progress: bool = True) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if max_length is not None and max_length <= target.prefix_length:
            raise InputError(f"max_length={max_length} keeps no token after the {target.prefix_length}-token chat "
                             "prefix; raise it or pass None.")
        self.target = target
        self.layer = target.validate_layer(layer)
        self.batch_size = batch_size
        self.dtype = dtype
        self.max_length = max_length
        self.storage_dtype = storage_dtype
        self.keep_all = keep_all
        self.progress = progress
        self.forward_texts = 0
        self._kept: dict[str, torch.Tensor] = {}

    def collect(self, texts: Sequence[str], keep: Sequence[bool] | None = None) -> TokenActivations:
        """Activations of `texts` (chat-formatted, e.g. `TargetModel.format_transcript`), in order.

        Texts flagged in `keep` stay cached for later calls; identical texts are computed once.
        """
        keys = [text_key(text) for text in texts]
        keep = [True] * len(texts) if self.keep_all else keep if keep is not None else [False] * len(texts)
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in self._kept:
                missing.setdefault(key, text)
        computed = dict(zip(missing, self._run(list(missing.values())))) if missing else {}
        for key, flag in zip(keys, keep):
            if flag and key in computed:
                self._kept[key] = computed[key]
        rows = [self._kept[key] if key in self._kept else computed[key] for key in keys]
        lengths = torch.tensor([row.shape[0] for row in rows], dtype=torch.long)
        offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
        offsets[1:] = lengths.cumsum(0)
        values = torch.cat(rows) if rows else torch.empty(0, self.target.hidden_size)
        return TokenActivations(values, offsets)

    def collect_sums(self, texts: Sequence[str], keep: Sequence[bool] | None = None) -> TextSums:
        """Per-text token sums of `texts`, in order: equal to `collect(texts, keep)`'s `segment_sum()` and
        `lengths`, but only the kept texts' token
        activations are held: the others are summed batch by batch, so memory is O(texts × d), not
        O(tokens × d) (DiffMean needs nothing more; at Gemma-2-2B width a 64-concept chunk's tokens are ~2 GB).
        """
        keys = [text_key(text) for text in texts]
        keep = [True] * len(texts) if self.keep_all else keep if keep is not None else [False] * len(texts)
        keep_keys = {key for key, flag in zip(keys, keep) if flag}
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in self._kept:
                missing.setdefault(key, text)
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        missing_keys = list(missing)
        for batch, rows in self._batches(list(missing.values())):
            # Summed per batch with the same segment math as `collect(...).segment_sum()`: identical values.
            packed = TokenActivations.cat([TokenActivations(row, torch.tensor([0, row.shape[0]])) for row in rows])
            for i, total, row in zip(batch, packed.segment_sum(), rows):
                key = missing_keys[i]
                sums[key], counts[key] = total, row.shape[0]
                if key in keep_keys:
                    self._kept[key] = row
        for key in keys:
            if key in self._kept and key not in sums:
                row = self._kept[key]
                sums[key] = TokenActivations(row, torch.tensor([0, row.shape[0]])).segment_sum()[0]
                counts[key] = row.shape[0]
        if not keys:
            return TextSums(torch.empty(0, self.target.hidden_size), torch.empty(0, dtype=torch.long))
        return TextSums(torch.stack([sums[key] for key in keys]),
                        torch.tensor([counts[key] for key in keys], dtype=torch.long))

    def _run(self, texts: list[str]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(texts)
        for batch, rows in self._batches(texts):
            for i, row in zip(batch, rows):
                out[i] = row
        return out  # type: ignore[return-value]  # every slot is filled above

    def _batches(self, texts: list[str]) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
        """(indices into `texts`, their content-token activations) per forward batch, shortest texts first."""
        ids = [self.target.encode(text)[: self.max_length] for text in texts]
        too_short = [i for i, row in enumerate(ids) if len(row) <= self.target.prefix_length]
        if too_short:
            raise InputError(f"Text {texts[too_short[0]][:80]!r} has no token after the chat prefix; pass "
                             "chat-formatted texts (TargetModel.format_transcript).")
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batches = [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc=f"activations @ layer {self.layer}", unit="batch",
                          disable=not self.progress or len(batches) < 2):
            hidden = self._forward([ids[i] for i in batch])
            yield batch, [hidden[row, self.target.prefix_length:len(ids[i])].clone() for row, i in enumerate(batch)]
        self.forward_texts += len(texts)

    def _forward(self, rows: list[list[int]]) -> torch.Tensor:
        # Right padding: real tokens keep positions 0..n-1 and causal attention never sees the pads.
        input_ids, attention_mask = pad_batch(rows, pad_token_id(self.target), side="right")
        autocast = (torch.autocast(self.target.device.type, dtype=self.dtype)
                    if self.dtype is not None and self.dtype != self.target.dtype else contextlib.nullcontext())
        with autocast:
            hidden = layer_outputs(self.target, [self.layer], input_ids, attention_mask)[self.layer]
        # Autocast keeps the residual sum in fp32; storing it in the compute dtype halves the cache.
        return hidden.to(self.storage_dtype or self.dtype or hidden.dtype)


def resolve_dtype(name: str, target: TargetModel) -> torch.dtype | None:
    """`auto`: bf16 on CUDA or on CPUs with native bf16, else the model's own dtype (None)."""
    if name == "auto":
        fast = target.device.type == "cuda" or cpu_has_fast_bf16()
        return torch.bfloat16 if fast else None
    if name == "model":
        return None
    return dtype_named(name, what="activation dtype", also="auto, model")
