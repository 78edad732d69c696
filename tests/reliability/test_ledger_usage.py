"""The ledger accepts only sane usage: a server's negative, fractional or non-numeric token counts make its answer
invalid — ledgered at the request's worst-case cost, asked again like any invalid answer — so no answer can lower
the spend the budget guard sees (before: a usage of −150M tokens ledgered −$150 and `max_usd` never tripped)."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from fixtures_llm import FaultServer, Reply, ok

from axdata.errors import InputError
from axdata.llm import (
    BudgetExceededError,
    ChatRequest,
    Completion,
    InvalidUsageError,
    LLMConfig,
    OpenAIChatClient,
    SamplingParams,
    StructuredOutputError,
)
from axdata.llm.ledger import Ledger, Prices, estimate_prompt_tokens

# $1 per million prompt tokens, $2 per million completion tokens: a usage of −150M prompt tokens would be −$150.
PRICES = {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}
PARAMS = SamplingParams(temperature=0.7, max_tokens=64)


def _client(server: FaultServer, **overrides) -> OpenAIChatClient:
    settings = {"endpoint": server.base_url, "model": "fault-model", "backoff_base_s": 0.01, "timeout_s": 5.0,
                **PRICES} | overrides
    return OpenAIChatClient(LLMConfig(**settings), server.base_url)


def _request(params: SamplingParams = PARAMS) -> ChatRequest:
    return ChatRequest.user("hello", purpose="usage", params=params)


def _worst_case(request: ChatRequest) -> float:
    """What the budget guard reserves for `request`: the most one answer to it can cost."""
    return Prices(**PRICES).cost(estimate_prompt_tokens(request), request.params.max_tokens)


def _with_usage(usage: object) -> Reply:
    reply = ok()
    body = dict(reply.body)  # type: ignore[arg-type]  # ok() builds a dict body
    body["usage"] = usage
    # json.dumps writes NaN / Infinity as the bare literals a broken server sends (and json.loads reads).
    return Reply(200, json.dumps(body).encode())


BAD_USAGE = {
    "negative prompt tokens (the -$150 ledger)": {"prompt_tokens": -150_000_000, "completion_tokens": 3},
    "negative completion tokens": {"prompt_tokens": 11, "completion_tokens": -5},
    "a string count": {"prompt_tokens": "eleven", "completion_tokens": 3},
    "a numeric string": {"prompt_tokens": "11", "completion_tokens": 3},
    "a fractional count": {"prompt_tokens": 11.5, "completion_tokens": 3},
    "NaN": {"prompt_tokens": float("nan"), "completion_tokens": 3},
    "Infinity": {"prompt_tokens": 11, "completion_tokens": float("inf")},
    "-Infinity": {"prompt_tokens": float("-inf"), "completion_tokens": 3},
    "a boolean": {"prompt_tokens": True, "completion_tokens": 3},
    "a nested object": {"prompt_tokens": {"cached": 3}, "completion_tokens": 3},
    "usage is a string": "lots",
    "usage is a list": [11, 3],
    "usage is a number": -150,
}


@pytest.mark.parametrize("usage", BAD_USAGE.values(), ids=BAD_USAGE.keys())
def test_unusable_usage_is_an_invalid_answer_paid_at_worst_case_then_asked_again(fault_server: FaultServer,
                                                                                usage: object) -> None:
    fault_server.push(_with_usage(usage))  # then the default: a valid answer with 11 + 3 tokens
    client = _client(fault_server)
    request = _request()
    completion = asyncio.run(client.complete(request))
    assert completion.text == "ok" and len(fault_server.requests) == 2
    bad, good = client.ledger.entries
    assert (bad["valid"], good["valid"]) == (False, True)
    assert bad["cost_usd"] == pytest.approx(_worst_case(request)) and bad["cost_usd"] > 0
    assert (bad["prompt_tokens"], bad["completion_tokens"]) == (estimate_prompt_tokens(request), 64)
    valid_cost = Prices(**PRICES).cost(11, 3)
    assert completion.answers == 2 and completion.cost_usd == pytest.approx(_worst_case(request) + valid_cost)
    assert client.ledger.spent_usd() == pytest.approx(_worst_case(request) + valid_cost)
    assert client.ledger.totals().invalid_answers == 1


SANE_USAGE = {
    "whole numbers": ({"prompt_tokens": 11, "completion_tokens": 3}, (11, 3, False)),
    "whole numbers written as floats": ({"prompt_tokens": 11.0, "completion_tokens": 3.0}, (11, 3, False)),
    "zero tokens": ({"prompt_tokens": 0, "completion_tokens": 0}, (0, 0, False)),
    # No usage at all (or a null count) is not a lie: the client estimates generously, as before.
    "no usage": (None, (None, 1, True)),
    "a null count": ({"prompt_tokens": None, "completion_tokens": 3}, (None, 1, True)),
}


@pytest.mark.parametrize(("usage", "expected"), SANE_USAGE.values(), ids=SANE_USAGE.keys())
def test_sane_or_missing_usage_is_ledgered_as_given_or_estimated(fault_server: FaultServer, usage: object,
                                                                expected: tuple[int | None, int, bool]) -> None:
    fault_server.push(_with_usage(usage))
    client = _client(fault_server)
    request = _request()
    completion = asyncio.run(client.complete(request))
    prompt_tokens, completion_tokens, estimated = expected
    assert len(fault_server.requests) == 1 and completion.answers == 1
    [entry] = client.ledger.entries
    assert entry["valid"] and entry["completion_tokens"] == completion_tokens
    assert entry["prompt_tokens"] == (estimate_prompt_tokens(request) if prompt_tokens is None else prompt_tokens)
    assert completion.extra.get("usage_estimated", False) is estimated


def test_a_server_that_always_lies_runs_into_the_budget(fault_server: FaultServer) -> None:
    """The issue's case: every answer claims −150M prompt tokens. Each is now paid at its worst case, so the
    guard trips after a bounded number of calls instead of letting the spend fall without end."""
    fault_server.default = _with_usage({"prompt_tokens": -150_000_000, "completion_tokens": 3})
    request = _request(SamplingParams(temperature=0.0, max_tokens=64))  # deterministic: never asked again
    worst = _worst_case(request)
    client = _client(fault_server, max_usd=3.5 * worst)
    errors: list[Exception] = []
    for _ in range(10):
        try:
            asyncio.run(client.complete(request))
        except (InvalidUsageError, BudgetExceededError) as error:
            errors.append(error)
            if isinstance(error, BudgetExceededError):
                break
    assert [type(error) for error in errors] == [InvalidUsageError] * 3 + [BudgetExceededError]
    assert client.ledger.spent_usd() == pytest.approx(3 * worst) and len(fault_server.requests) == 3
    first = errors[0]
    assert isinstance(first, StructuredOutputError)  # the judge counts it as an unparsed answer, as any invalid one
    assert (first.answers, first.cost_usd) == (1, pytest.approx(worst))
    assert "usage.prompt_tokens is -150000000" in str(first) and "worst-case cost" in str(first)


def test_usage_invalid_answers_are_asked_again_a_bounded_number_of_times(fault_server: FaultServer, caplog) -> None:
    fault_server.default = _with_usage({"prompt_tokens": "n/a", "completion_tokens": 3})
    client = _client(fault_server, max_invalid_retries=2)
    with pytest.raises(InvalidUsageError, match="gave up after 3 answer") as info:
        asyncio.run(client.complete(_request()))
    # Logged once (not once per answer), naming the server and the field.
    warnings = [r.getMessage() for r in caplog.records if "unusable token usage" in r.getMessage()]
    assert len(warnings) == 1 and fault_server.base_url in warnings[0] and "usage.prompt_tokens" in warnings[0]
    assert len(fault_server.requests) == 3 and info.value.answers == 3
    assert [entry["valid"] for entry in client.ledger.entries] == [False] * 3
    assert info.value.cost_usd == pytest.approx(3 * _worst_case(_request()))


BAD_COMPLETIONS = {
    "negative prompt tokens": {"prompt_tokens": -1},
    "negative cost": {"cost_usd": -150.0},
    "NaN cost": {"cost_usd": math.nan},
    "infinite cost": {"cost_usd": math.inf},
    "a string count": {"completion_tokens": "3"},
}


@pytest.mark.parametrize("fields", BAD_COMPLETIONS.values(), ids=BAD_COMPLETIONS.keys())
def test_the_ledger_refuses_an_unbillable_paid_answer(fields: dict) -> None:
    """A backend that forgot to check its usage is a bug: the ledger refuses the entry rather than lower the spend."""
    ledger = Ledger(max_usd=1.0)
    with pytest.raises(ValueError, match="must refuse unusable usage"):
        ledger.record(_request(), Completion(text="x", model="m", **fields))
    assert ledger.entries == [] and ledger.spent_usd() == 0.0
    ledger.record(_request(), Completion(text="x", model="m", cached=True, **fields))  # a cache hit adds nothing


@pytest.mark.parametrize("name", ["max_usd", "input_usd_per_mtok", "output_usd_per_mtok"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_a_non_finite_or_negative_price_or_budget_is_refused(name: str, value: float) -> None:
    # NaN compares False with everything: a NaN budget or price would switch the guard off without a word.
    with pytest.raises(InputError, match=f"LLMConfig.{name}=.*finite number"):
        LLMConfig(**{name: value})
