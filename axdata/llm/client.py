"""One async client for any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, the embedded server).

Around each request, in this order: the response cache (a hit makes no call), the concurrency bound,
then our own retry loop — the `openai` client runs with `max_retries=0` so that every attempt, wait and
failure is visible here — with the budget guard before every attempt (it refuses before any network I/O).
Every answer the server returns is recorded in the ledger as it arrives, before validation: an answer that
fails its JSON schema is paid for, so the ledger and the budget count it. Only answers that parsed (and, with
a JSON schema, validated) are cached.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import random
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

import openai
from huggingface_hub.utils import tqdm

from axdata.llm.cache import ResponseCache
from axdata.llm.config import LLMConfig
from axdata.llm.ledger import Ledger, Prices, estimate_prompt_tokens
from axdata.llm.structured import check_schema, extract_json, prompt_instruction, validate
from axdata.llm.types import (
    ChatRequest,
    Completion,
    InvalidUsageError,
    LLMError,
    LLMRequestError,
    StructuredOutputError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Local servers ignore the key, but the openai client refuses to start without one.
_DUMMY_KEY = "sk-no-key-required"
_RETRYABLE_STATUS = {408, 409, 429}
_SCHEMA_REJECTION_HINTS = ("response_format", "json_schema", "not supported")


class _RetryableError(Exception):
    def __init__(self, reason: str, retry_after_s: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, retry_after_s


class _InvalidAnswerError(_RetryableError):
    """The answer arrived (and was paid for) but does not parse or validate against the schema, or reports a token
    usage that cannot be billed; keeps the raw text, the answer's cost and the error to raise on giving up."""

    def __init__(self, reason: str, text: str, cost_usd: float = 0.0,
                 final: type[StructuredOutputError] = StructuredOutputError):
        super().__init__(reason)
        self.text, self.cost_usd, self.final = text, cost_usd, final


class _FatalError(Exception):
    pass


class _SchemaRejectedError(Exception):
    """The server refused `response_format`: switch to prompt mode."""


class _Aborted(Exception):
    """Another request of the same batch failed; this one was not started."""


@dataclass
class _LoopState:
    """What is bound to one event loop: the HTTP client's connection pool and the semaphore."""

    loop: asyncio.AbstractEventLoop
    client: openai.AsyncOpenAI
    semaphore: asyncio.Semaphore


def is_loopback_url(url: str) -> bool:
    return (urlparse(url).hostname or "") in _LOOPBACK_HOSTS


class OpenAIChatClient:
    """`ChatBackend` over an OpenAI-compatible `/v1/chat/completions` endpoint.

    The API key comes from `api_key` or the environment variable `config.api_key_env`; it is handed
    to the HTTP client only and never logged, cached or recorded.
    """

    def __init__(
        self,
        config: LLMConfig,
        base_url: str,
        cache: ResponseCache | None = None,
        ledger: Ledger | None = None,
        api_key: str | None = None,
    ):
        self.config = config
        self.base_url = base_url.rstrip("/")
        self.model_name = config.model
        self.cache = cache
        self.ledger = ledger if ledger is not None else Ledger(max_usd=config.max_usd)
        self.prices = Prices.for_model(config.model, config.input_usd_per_mtok, config.output_usd_per_mtok)
        self._api_key = api_key if api_key is not None else self._key_from_env()
        self._schema_mode = "prompt" if config.structured_output == "prompt" else "json_schema"
        self._state: _LoopState | None = None
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._usage_warned = False

    def _key_from_env(self) -> str:
        key = os.environ.get(self.config.api_key_env)
        if key:
            return key
        if is_loopback_url(self.base_url) or self.config.dry_run:
            return _DUMMY_KEY
        raise LLMError(
            f"No API key for {self.base_url}: the environment variable {self.config.api_key_env} is not set. "
            f"Export it (export {self.config.api_key_env}=...), or point llm.api_key_env at the variable "
            "that holds the key."
        )

    @property
    def schema_mode(self) -> str:
        """'json_schema' (server-side constraint) or 'prompt' (after a fallback, or when configured)."""
        return self._schema_mode

    # ---- public API -------------------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> Completion:
        return await self._complete(request, abort=None)

    async def complete_many(
        self, requests: Sequence[ChatRequest], desc: str | None = None
    ) -> list[Completion]:
        """Answers in the order of `requests`.

        On the first failure no further request starts; those in flight finish (and are cached and
        recorded, so a re-run resumes from them), then the first error is raised.
        """
        abort = asyncio.Event()
        errors: list[Exception] = []
        bar = tqdm(total=len(requests), desc=desc or "LLM requests", unit="req", disable=len(requests) < 2)

        async def one(request: ChatRequest) -> Completion | None:
            try:
                completion = await self._complete(request, abort)
            except _Aborted:
                return None
            except Exception as err:  # noqa: BLE001 - any failure stops the batch; the first is re-raised below
                if not abort.is_set():
                    abort.set()
                    errors.append(err)
                return None
            bar.update(1)
            return completion

        try:
            results = await asyncio.gather(*(one(request) for request in requests))
        finally:
            bar.close()
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]  # no error means every slot holds a Completion

    def complete_sync(self, request: ChatRequest) -> Completion:
        return self.run_sync(self.complete(request))

    def complete_many_sync(
        self, requests: Sequence[ChatRequest], desc: str | None = None
    ) -> list[Completion]:
        return self.run_sync(self.complete_many(requests, desc=desc))

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of this client from synchronous code, on a loop the client keeps between calls
        (so its HTTP connections are reused)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError(
                "OpenAIChatClient.run_sync/complete_*_sync was called inside a running event loop "
                "(async code or a notebook); use `await client.complete_many(...)` there instead."
            )
        if self._sync_loop is None or self._sync_loop.is_closed():
            self._sync_loop = asyncio.new_event_loop()
        return self._sync_loop.run_until_complete(coro)

    def close(self) -> None:
        """Close the HTTP connections opened from `run_sync`; async users call `aclose` instead."""
        if self._sync_loop is not None and not self._sync_loop.is_closed():
            if self._state is not None and self._state.loop is self._sync_loop:
                self._sync_loop.run_until_complete(self._state.client.close())
                self._state = None
            self._sync_loop.close()
        self._sync_loop = None

    async def aclose(self) -> None:
        if self._state is not None and self._state.loop is asyncio.get_running_loop():
            await self._state.client.close()
            self._state = None

    # ---- one request --------------------------------------------------------------------------------

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=self.config.timeout_s
            )
            self._state = _LoopState(loop, client, asyncio.Semaphore(self.config.max_concurrency))
        return self._state

    async def _complete(self, request: ChatRequest, abort: asyncio.Event | None) -> Completion:
        if request.json_schema is not None:
            check_schema(request.json_schema)
        key = request.cache_key(self.model_name)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.ledger.record(request, hit)
                return hit
        if self.config.dry_run:
            return self._dry_run(request)
        state = self._loop_state()
        async with state.semaphore:
            if abort is not None and abort.is_set():
                raise _Aborted()
            completion = await self._with_retries(request, state.client)
        if self.cache is not None:
            self.cache.put(key, completion, request.purpose)
        return completion

    def _dry_run(self, request: ChatRequest) -> Completion:
        prompt_tokens = estimate_prompt_tokens(request)
        completion = Completion(
            text="",
            model=self.model_name,
            prompt_tokens=prompt_tokens,
            completion_tokens=request.params.max_tokens,
            dry_run=True,
            cost_usd=self.prices.cost(prompt_tokens, request.params.max_tokens),
        )
        self.ledger.record(request, completion)
        return completion

    async def _with_retries(self, request: ChatRequest, client: openai.AsyncOpenAI) -> Completion:
        attempt, invalid_answers, invalid_cost = 0, 0, 0.0
        while True:
            # Every attempt passes the budget guard: retries of invalid answers are paid for too.
            reserved = self.ledger.reserve(request, self.prices)
            try:
                completion = await self._attempt(request, client)
                completion.answers += invalid_answers
                completion.cost_usd += invalid_cost
                return completion
            except _SchemaRejectedError:
                # A mode switch, not a failure: the next attempt does not count against max_retries.
                logger.warning(
                    "%s rejected response_format=json_schema; falling back to schema-in-prompt mode "
                    "for %s (set llm.structured_output='prompt' to skip the probe).",
                    self.base_url,
                    self.model_name,
                )
                self._schema_mode = "prompt"
                continue
            except _FatalError as err:
                raise LLMRequestError(self.base_url, request.purpose, str(err)) from None
            except _RetryableError as err:
                failure = err
            finally:
                self.ledger.release(reserved)
            if isinstance(failure, _InvalidAnswerError):
                invalid_answers, invalid_cost = invalid_answers + 1, invalid_cost + failure.cost_usd
                # An invalid answer is the server working: ask again at once, a bounded number of times, and
                # never repeat a deterministic request (it would be the same answer, paid again).
                # A request may set its own bound (the reference protocol's judge: none).
                allowed = self.config.max_invalid_retries if request.max_invalid_retries is None \
                    else request.max_invalid_retries
                if request.params.temperature == 0:
                    allowed = 0
                if invalid_answers > allowed:
                    raise failure.final(
                        failure.text, f"{failure.reason} (gave up after {invalid_answers} answer(s); "
                        f"llm.max_invalid_retries={self.config.max_invalid_retries}, none at temperature 0"
                        f"{'' if request.max_invalid_retries is None else ', this request allows ' + str(allowed)}); "
                        f"request {request.purpose!r} to {self.base_url}",
                        answers=invalid_answers, cost_usd=invalid_cost,
                    ) from None
                logger.debug("Re-asking %r request to %s after an invalid answer: %s", request.purpose,
                             self.base_url, failure.reason)
                continue
            if attempt >= self.config.max_retries:
                reason = (
                    f"{failure.reason} (gave up after {attempt + 1} attempts; "
                    f"llm.max_retries={self.config.max_retries})"
                )
                raise LLMRequestError(self.base_url, request.purpose, reason) from None
            delay = self._delay(attempt, failure.retry_after_s)
            # Debug level: a progress bar is usually on screen; the final error, if any, says what happened.
            logger.debug(
                "Retrying %r request to %s in %.2f s (attempt %d of %d): %s",
                request.purpose,
                self.base_url,
                delay,
                attempt + 2,
                self.config.max_retries + 1,
                failure.reason,
            )
            attempt += 1
            await asyncio.sleep(delay)

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.config.backoff_max_s)
        # Full jitter: spreads the retries of many concurrent requests instead of synchronising them.
        return random.uniform(0.0, min(self.config.backoff_max_s, self.config.backoff_base_s * 2**attempt))

    def _messages(self, request: ChatRequest, prompt_mode: bool) -> list[dict[str, str]]:
        messages = [dict(m) for m in request.messages]
        if prompt_mode:
            assert request.json_schema is not None
            instruction = prompt_instruction(request.json_schema)
            if messages and messages[-1].get("role") == "user":
                messages[-1]["content"] = f"{messages[-1]['content']}\n\n{instruction}"
            else:
                messages.append({"role": "user", "content": instruction})
        return messages

    async def _attempt(self, request: ChatRequest, client: openai.AsyncOpenAI) -> Completion:
        schema = request.json_schema
        use_response_format = schema is not None and self._schema_mode == "json_schema"
        params = request.params
        kwargs: dict[str, Any] = {
            "model": self.model_name,
            "messages": self._messages(request, prompt_mode=schema is not None and not use_response_format),
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if use_response_format:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": dict(schema), "strict": True},
            }
        try:
            raw = await client.chat.completions.with_raw_response.create(**kwargs)
            body = raw.text
        except openai.APITimeoutError:
            raise _RetryableError(f"timed out after {self.config.timeout_s} s (llm.timeout_s)") from None
        except openai.APIConnectionError as err:
            raise _RetryableError(f"connection failed: {err.__cause__ or err}") from None
        except openai.APIStatusError as err:
            raise self._status_error(err, use_response_format) from None
        completion = self._parse(body, request)  # the answer's tokens are known: it is paid for
        try:
            if _USAGE_PROBLEM in completion.extra:
                if not self._usage_warned:  # once per client: a broken server would repeat it on every answer
                    self._usage_warned = True
                    logger.warning("%s sent an unusable token usage (%s): such an answer is invalid, counted at its "
                                   "request's worst-case cost ($%.4f here) and asked again.", self.base_url,
                                   completion.extra[_USAGE_PROBLEM], completion.cost_usd)
                raise _InvalidAnswerError(completion.extra[_USAGE_PROBLEM], completion.text, final=InvalidUsageError)
            completion.parsed = self._validated(completion.text, request)
        except _InvalidAnswerError as err:
            self.ledger.record(request, completion, valid=False)
            err.cost_usd = completion.cost_usd
            raise
        self.ledger.record(request, completion)
        return completion

    def _status_error(self, err: openai.APIStatusError, sent_response_format: bool) -> Exception:
        status = err.status_code
        reason = f"HTTP {status}: {_short(err.message)}"
        if status in _RETRYABLE_STATUS or status >= 500:
            return _RetryableError(reason, _retry_after_s(err.response.headers))
        if (
            status == 400
            and sent_response_format
            and self.config.structured_output == "auto"
            and any(hint in str(err.message).lower() for hint in _SCHEMA_REJECTION_HINTS)
        ):
            return _SchemaRejectedError()
        return _FatalError(f"{reason} (not retried: the request itself was refused)")

    def _parse(self, body: str, request: ChatRequest) -> Completion:
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            text = choice["message"]["content"]
            usage = data.get("usage")
            if not isinstance(text, str):
                raise TypeError(f"message content is {type(text).__name__}, not text")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise _RetryableError(
                f"malformed response body ({type(err).__name__}: {err}): {_short(body)}"
            ) from None
        extra: dict[str, Any] = {}
        try:
            counts = usage_counts(usage)
        except ValueError as err:
            # A negative or non-numeric count would lower (or break) the spend the budget guard sees: the answer is
            # invalid and is paid at its request's worst case, the amount the guard reserved for it.
            counts, extra[_USAGE_PROBLEM] = (estimate_prompt_tokens(request), request.params.max_tokens), str(err)
        if counts is None:
            # Without usage the ledger would under-count; a generous estimate keeps the budget guard honest.
            counts, extra["usage_estimated"] = (estimate_prompt_tokens(request), max(1, len(text) // 3)), True
        prompt_tokens, completion_tokens = counts
        return Completion(
            text=text,
            model=self.model_name,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=self.prices.cost(prompt_tokens, completion_tokens),
            finish_reason=choice.get("finish_reason"),
            extra=extra,
        )

    @staticmethod
    def _validated(text: str, request: ChatRequest) -> Any:
        """The answer's JSON value when the request carries a schema (None without one)."""
        if request.json_schema is None:
            return None
        try:
            parsed = extract_json(text)
        except ValueError as err:
            raise _InvalidAnswerError(str(err), text) from None
        problems = validate(parsed, request.json_schema)
        if problems:
            raise _InvalidAnswerError("; ".join(problems[:5]), text)
        return parsed


_USAGE_FIELDS = ("prompt_tokens", "completion_tokens")
_USAGE_PROBLEM = "usage_problem"  # Completion.extra key: why the answer's usage was refused


def usage_counts(usage: object) -> tuple[int, int] | None:
    """The (prompt, completion) token counts of an answer's `usage`, None when the server sent none (or left a
    count null). Raises ValueError naming the field when a count is not a whole number >= 0 (a number with a
    zero fraction, as some servers send, is accepted).

    >>> usage_counts({"prompt_tokens": 12, "completion_tokens": 3.0}), usage_counts(None)
    ((12, 3), None)
    >>> usage_counts({"prompt_tokens": -150000000, "completion_tokens": 3})
    Traceback (most recent call last):
    ...
    ValueError: usage.prompt_tokens is -150000000, not a whole number of tokens >= 0
    """
    if usage is None:
        return None
    if not isinstance(usage, Mapping):
        raise ValueError(f"usage is {_short(json.dumps(usage), 60)}, not an object of token counts")
    values = [usage.get(name) for name in _USAGE_FIELDS]
    if any(value is None for value in values):
        return None
    for name, value in zip(_USAGE_FIELDS, values):
        # bool is an int subclass, and json.loads reads NaN / Infinity: neither is a token count.
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or value < 0 or value != int(value):
            raise ValueError(f"usage.{name} is {_short(json.dumps(value), 60)}, not a whole number of tokens >= 0")
    return int(values[0]), int(values[1])


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The server's requested wait: `retry-after-ms`, else `Retry-After` in seconds or as an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _short(text: object, limit: int = 300) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "…"
