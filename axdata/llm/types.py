"""The request/response contract shared by every chat backend (remote LLM client, in-process model)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from axdata.errors import AxbenchError
from axdata.hashing import content_hash


class LLMError(AxbenchError, RuntimeError):
    """Base class of every error raised by a chat backend."""


class LLMRequestError(LLMError):
    """A request failed for good (after retries); names the endpoint and the request purpose."""

    def __init__(self, endpoint: str, purpose: str, reason: str):
        self.endpoint, self.purpose, self.reason = endpoint, purpose, reason
        super().__init__(f"LLM request for {purpose!r} to {endpoint} failed: {reason}")


class BudgetExceededError(LLMError):
    """Starting a call would take the ledger's spend past `max_usd`."""


class EmbeddedServerError(LLMError):
    """The embedded LLM server could not start (unknown model, busy port, crash, startup timeout)."""


class StructuredOutputError(LLMError):
    """A response that should match a JSON schema does not; `text` keeps the raw answer.

    `answers` and `cost_usd` count the invalid answers the server returned (each one paid for and ledgered).
    """

    def __init__(self, text: str, reason: str, *, answers: int = 0, cost_usd: float = 0.0):
        self.text, self.reason, self.answers, self.cost_usd = text, reason, answers, cost_usd
        super().__init__(self._message(reason, text))

    @staticmethod
    def _message(reason: str, text: str) -> str:
        return f"Response does not match the requested JSON schema ({reason}): {text[:200]!r}"


class InvalidUsageError(StructuredOutputError):
    """The server's answers report token usage that cannot be billed (negative, fractional, not a number).

    Each such answer is ledgered at its request's worst-case cost, so a broken `usage` can never lower the spend
    the budget guard sees; like any invalid answer it is asked again (`llm.max_invalid_retries`).
    """

    @staticmethod
    def _message(reason: str, text: str) -> str:
        return (f"The LLM server reported unusable token usage ({reason}); each such answer was counted at its "
                "request's worst-case cost. Use a server whose `usage` counts are whole numbers >= 0, or one that "
                "sends no `usage` (the client then estimates the tokens).")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    max_tokens: int = 256
    top_p: float = 1.0
    seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": self.top_p,
                "seed": self.seed}


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to make.

    `purpose` tags the ledger (genre, positives, judge…); `template_hash` versions the prompt
    template; `sample_index` distinguishes deliberate repeated samples of the same prompt, so the
    cache key never depends on call order.
    """

    messages: tuple[Mapping[str, str], ...]
    purpose: str
    params: SamplingParams = SamplingParams()
    template_hash: str = ""
    json_schema: Mapping[str, Any] | None = None
    concept_id: int | None = None
    sample_index: int = 0
    # Re-asks after an answer that fails `json_schema` (None: the client's llm.max_invalid_retries). Part of the
    # cache key when set: an answer that needed a re-ask must not be reused as the answer to a single ask.
    max_invalid_retries: int | None = None

    @classmethod
    def user(cls, content: str, purpose: str, **kwargs: Any) -> ChatRequest:
        return cls(messages=({"role": "user", "content": content},), purpose=purpose, **kwargs)

    def cache_key(self, model: str) -> str:
        return content_hash(
            {
                "model": model,
                "params": self.params.as_dict(),
                "messages": [dict(m) for m in self.messages],
                "template_hash": self.template_hash,
                "json_schema": self.json_schema,
                "sample_index": self.sample_index,
                # only when set, so that every existing key (and cached answer) stays valid
                **({} if self.max_invalid_retries is None else {"max_invalid_retries": self.max_invalid_retries}),
            },
            length=64,
        )


@dataclass
class Completion:
    """One answer. `cost_usd` and `answers` cover every paid answer behind it: invalid answers that were asked
    again count too. A cache hit costs nothing now (`cost_usd` 0, `answers` 0); `reused_cost_usd` is what it
    cost when it was paid for."""

    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    answers: int = 1
    reused_cost_usd: float = 0.0
    cached: bool = False
    dry_run: bool = False
    finish_reason: str | None = None
    parsed: Any = None  # the validated JSON value when the request carried a schema
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that answers chat requests: the OpenAI-compatible client or an in-process model."""

    model_name: str

    async def complete(self, request: ChatRequest) -> Completion: ...

    async def complete_many(self, requests: Sequence[ChatRequest], desc: str | None = None) -> list[Completion]:
        """Answers in the order of `requests`."""
        ...
