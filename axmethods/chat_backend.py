"""The target model answering chat requests in-process: how AxBench's shared negatives are made.

`TransformersChatBackend` implements `axdata.llm.types.ChatBackend`, so the generation steps
take it wherever they take the OpenAI-compatible client. Requests are chat-templated, sorted by
length and generated in left-padded batches by the KV-cache decode loop steering uses
(`axmethods.inference.sampling.sample`), where every row keeps its own sampling parameters and seed:

- temperature 0 → greedy (argmax);
- temperature > 0 → sampling (top-k from the backend's `top_k`, top-p from the request) seeded by
  `params.seed`, or, when that is None, by the request's cache key. A request reproduces the same text
  whatever batch it lands in, up to floating-point differences that padding and batch shape cause in the
  logits (rare flips of near-tied tokens; exact on CPU in our tests).

Cache hits skip generation; every answer (hit or not) goes to the ledger. Structured output
(`json_schema`) is not supported here: send those requests to the OpenAI-compatible client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from huggingface_hub.utils import tqdm

from axdata.errors import InputError
from axdata.llm.cache import ResponseCache
from axdata.llm.ledger import Ledger
from axdata.llm.types import ChatRequest, Completion
from axmethods.inference.sampling import SamplingConfig, sample, stop_token_ids
from axmethods.models import TargetModel

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    key: str
    request: ChatRequest
    prompt_ids: list[int]


class TransformersChatBackend:
    """Answers `ChatRequest`s with a loaded `TargetModel` (batched, left-padded, greedy at temperature 0).

    `top_k` (0 = off) truncates sampled requests to the k most likely tokens (OpenAI-style requests carry no
    top-k); a non-zero value is part of the cache key.
    """

    def __init__(self, target: TargetModel, *, batch_size: int = 8, top_k: int = 0, cache: ResponseCache | None = None,
                 ledger: Ledger | None = None):
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if top_k < 0:
            raise InputError(f"top_k must be 0 (off) or more, got {top_k}")
        self.target = target
        self.model_name = target.spec
        self.batch_size = batch_size
        self.top_k = top_k
        self.cache = cache
        self.ledger = ledger
        self._stop_ids = frozenset(stop_token_ids(target))
        self._cache_model = f"{self.model_name}@top_k={top_k}" if top_k else self.model_name
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
            key = request.cache_key(self._cache_model)
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
        configs = [SamplingConfig(max_new_tokens=job.request.params.max_tokens, temperature=job.request.params.temperature,
                                  top_k=self.top_k, top_p=job.request.params.top_p) for job in jobs]
        with self._model_lock:
            generated = sample(self.target, [job.prompt_ids for job in jobs], [_seed(job) for job in jobs], configs)
        completions = []
        for job, tokens in zip(jobs, generated):
            reason = "stop" if tokens[-1] in self._stop_ids else "length"
            text_ids = tokens[:-1] if reason == "stop" else tokens
            text = self.target.tokenizer.decode(text_ids, skip_special_tokens=True).strip()
            completions.append(Completion(
                text=text, model=self.model_name, prompt_tokens=len(job.prompt_ids),
                completion_tokens=len(tokens), cost_usd=0.0, finish_reason=reason,
            ))
        return completions


def _seed(job: _Job) -> int:
    """`params.seed`, else the cache key: the same request samples the same text, consistent with what the
    cache would return anyway."""
    return job.request.params.seed if job.request.params.seed is not None else int(job.key[:15], 16)


def _check_supported(request: ChatRequest) -> None:
    if request.json_schema is not None:
        raise InputError(
            f"Request {request.purpose!r} asks for structured output (json_schema), which the in-process "
            "target-model backend does not constrain; send it to the OpenAI-compatible LLM client."
        )
    if request.params.max_tokens < 1:
        raise InputError(f"Request {request.purpose!r} has max_tokens={request.params.max_tokens}; use 1 or more.")
    if request.params.temperature < 0:
        raise InputError(
            f"Request {request.purpose!r} has temperature={request.params.temperature}; use 0 (greedy) or more."
        )
