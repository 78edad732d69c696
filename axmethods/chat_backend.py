"""The target model answering chat requests in-process: how AxBench's shared negatives are made.

`TransformersChatBackend` implements `axdata.llm.types.ChatBackend`, so the generation steps
take it wherever they take the OpenAI-compatible client. Requests are chat-templated, sorted by
length and generated in left-padded batches by a small decoding loop with a KV cache. The loop is
our own rather than `generate()` because every row keeps its own sampling parameters and its own
random generator:

- temperature 0 → greedy (argmax);
- temperature > 0 → sampling (with top-p) from a generator seeded by `params.seed`, or, when that is
  None, by the request's cache key. A row draws from its generator only while it is generating, so a
  request reproduces the same text whatever batch it lands in, up to floating-point differences that
  padding and batch shape cause in the logits (rare flips of near-tied tokens; exact on CPU in our tests).

Cache hits skip generation; every answer (hit or not) goes to the ledger. Structured output
(`json_schema`) is not supported here: send those requests to the OpenAI-compatible client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from huggingface_hub.utils import tqdm

from axdata.llm.cache import ResponseCache
from axdata.llm.ledger import Ledger
from axdata.llm.types import ChatRequest, Completion
from axmethods.models import TargetModel

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    key: str
    request: ChatRequest
    prompt_ids: list[int]


class TransformersChatBackend:
    """Answers `ChatRequest`s with a loaded `TargetModel` (batched, left-padded, greedy at temperature 0)."""

    def __init__(self, target: TargetModel, *, batch_size: int = 8, cache: ResponseCache | None = None,
                 ledger: Ledger | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.target = target
        self.model_name = target.spec
        self.batch_size = batch_size
        self.cache = cache
        self.ledger = ledger
        self._stop_ids = _stop_token_ids(target)
        tokenizer = target.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_id = pad if pad is not None else 0
        # transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name warns).
        forward_params = inspect.signature(target.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_params else "past_key_values"
        # Concurrent complete_many calls would otherwise run two forward passes at once on one model.
        self._model_lock = threading.Lock()

    async def complete(self, request: ChatRequest) -> Completion:
        return (await self.complete_many([request]))[0]

    async def complete_many(self, requests: Sequence[ChatRequest], desc: str | None = None) -> list[Completion]:
        """Answers in the order of `requests`; identical requests are generated once."""
        results: list[Completion | None] = [None] * len(requests)
        waiting: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            _check_supported(request)
            key = request.cache_key(self.model_name)
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[index] = hit
                self._record(request, hit)
            else:
                waiting.setdefault(key, []).append(index)

        jobs = [_Job(key, requests[indices[0]], self._encode(requests[indices[0]]))
                for key, indices in waiting.items()]
        # Similar lengths in one batch waste less compute on padding.
        jobs.sort(key=lambda job: len(job.prompt_ids))
        batches = [jobs[start:start + self.batch_size] for start in range(0, len(jobs), self.batch_size)]
        with tqdm(total=len(batches), desc=desc or f"{self.model_name} answering", unit="batch",
                  disable=len(batches) < 2) as bar:
            for batch in batches:
                completions = await asyncio.to_thread(self._generate, batch)
                for job, completion in zip(batch, completions):
                    if self.cache is not None:
                        self.cache.put(job.key, completion, job.request.purpose)
                    first, *repeats = waiting[job.key]
                    results[first] = completion
                    self._record(requests[first], completion)
                    for index in repeats:
                        results[index] = dataclasses.replace(completion, cached=True)
                        self._record(requests[index], results[index])
                bar.update(1)
        return results  # type: ignore[return-value]  # every slot is filled above

    def _record(self, request: ChatRequest, completion: Completion) -> None:
        if self.ledger is not None:
            self.ledger.record(request, completion)

    def _encode(self, request: ChatRequest) -> list[int]:
        return self.target.tokenizer.apply_chat_template(
            [dict(message) for message in request.messages],
            add_generation_prompt=True, tokenize=True, return_dict=False,
        )

    def _generate(self, jobs: list[_Job]) -> list[Completion]:
        with self._model_lock, torch.inference_mode():
            return self._decode(jobs)

    def _decode(self, jobs: list[_Job]) -> list[Completion]:
        model, device = self.target.model, self.target.device
        rows = len(jobs)
        width = max(len(job.prompt_ids) for job in jobs)
        input_ids = torch.full((rows, width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, width), dtype=torch.long)
        for row, job in enumerate(jobs):
            input_ids[row, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids)
            attention_mask[row, width - len(job.prompt_ids):] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        # Left padding: positions count real tokens only, so a row's positions match its unpadded run.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

        budgets = [job.request.params.max_tokens for job in jobs]
        generators = [self._generator(job, device) for job in jobs]
        generated: list[list[int]] = [[] for _ in jobs]
        finish: list[str | None] = [None] * rows

        outputs = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=True, logits_to_keep=1)
        for _ in range(max(budgets)):
            tokens = self._pick(outputs.logits[:, -1, :], jobs, generators, finish)
            for row, token in enumerate(tokens):
                if finish[row] is not None:
                    continue
                generated[row].append(token)
                if token in self._stop_ids:
                    finish[row] = "stop"
                elif len(generated[row]) >= budgets[row]:
                    finish[row] = "length"
            if all(reason is not None for reason in finish):
                break
            # Finished rows keep decoding a token nobody reads: cheaper than reshaping the cache.
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((rows, 1))], dim=1)
            position_ids = position_ids[:, -1:] + 1
            outputs = model(input_ids=torch.tensor(tokens, device=device).unsqueeze(1),
                            attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=True, logits_to_keep=1,
                            **{self._cache_arg: outputs[self._cache_arg]})

        completions = []
        for job, tokens, reason in zip(jobs, generated, finish):
            text_ids = tokens[:-1] if reason == "stop" else tokens
            text = self.target.tokenizer.decode(text_ids, skip_special_tokens=True).strip()
            completions.append(Completion(
                text=text, model=self.model_name, prompt_tokens=len(job.prompt_ids),
                completion_tokens=len(tokens), cost_usd=0.0, finish_reason=reason,
            ))
        return completions

    @staticmethod
    def _generator(job: _Job, device: torch.device) -> torch.Generator | None:
        params = job.request.params
        if params.temperature == 0:
            return None
        # Without an explicit seed the cache key seeds it: the same request samples the same text,
        # consistent with what the cache would return anyway.
        seed = params.seed if params.seed is not None else int(job.key[:15], 16)
        return torch.Generator(device=device).manual_seed(seed)

    @staticmethod
    def _pick(logits: torch.Tensor, jobs: list[_Job], generators: list[torch.Generator | None],
              finish: list[str | None]) -> list[int]:
        logits = logits.float()
        tokens = logits.argmax(dim=-1).tolist()
        for row, (job, generator) in enumerate(zip(jobs, generators)):
            if generator is None or finish[row] is not None:
                continue
            params = job.request.params
            probs = torch.softmax(logits[row] / params.temperature, dim=-1)
            if params.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                # Keep the smallest set of top tokens whose mass reaches top_p (always the first one).
                outside = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
                probs = probs.scatter(0, order, sorted_probs.masked_fill(outside, 0.0))
            tokens[row] = int(torch.multinomial(probs, 1, generator=generator))
        return tokens


def _check_supported(request: ChatRequest) -> None:
    if request.json_schema is not None:
        raise ValueError(
            f"Request {request.purpose!r} asks for structured output (json_schema), which the in-process "
            "target-model backend does not constrain; send it to the OpenAI-compatible LLM client."
        )
    if request.params.max_tokens < 1:
        raise ValueError(f"Request {request.purpose!r} has max_tokens={request.params.max_tokens}; use 1 or more.")
    if request.params.temperature < 0:
        raise ValueError(
            f"Request {request.purpose!r} has temperature={request.params.temperature}; use 0 (greedy) or more."
        )


def _stop_token_ids(target: TargetModel) -> frozenset[int]:
    """EOS ids of the tokenizer and generation config, plus the chat template's end-of-turn token."""
    ids: set[int] = set()
    eos = target.model.generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if target.tokenizer.eos_token_id is not None:
        ids.add(target.tokenizer.eos_token_id)
    suffix_ids = target.encode(target.turn_suffix)
    # A chat template ends turns with its own token (Gemma's <end_of_turn>), not always EOS. GGUF
    # tokenizers list such control tokens as added tokens but not always as special ones.
    control_ids = set(target.tokenizer.all_special_ids) | set(target.tokenizer.get_added_vocab().values())
    if suffix_ids and suffix_ids[0] in control_ids:
        ids.add(suffix_ids[0])
    return frozenset(ids)
