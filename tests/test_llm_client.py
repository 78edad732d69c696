"""The LLM client against the real embedded server: answers, JSON schema, cache, ledger, budget, dry run."""

from __future__ import annotations

import asyncio

import pytest
from fixtures_llm import FaultServer

from axdata.llm import (
    BudgetExceededError,
    ChatBackend,
    ChatRequest,
    Completion,
    Ledger,
    LLMConfig,
    OpenAIChatClient,
    ResponseCache,
    SamplingParams,
)
from axdata.llm.ledger import estimate_prompt_tokens

SHORT = SamplingParams(temperature=0.0, max_tokens=8)
RATING_SCHEMA = {
    "type": "object",
    "properties": {
        "rating": {"type": "integer", "minimum": 0, "maximum": 2},
        "reason": {"type": "string", "maxLength": 30},
    },
    "required": ["rating", "reason"],
    "additionalProperties": False,
}


def real_client(
    server, cache: ResponseCache | None = None, ledger: Ledger | None = None, **overrides
) -> OpenAIChatClient:
    config = LLMConfig(
        **({"endpoint": server.base_url, "model": server.model, "timeout_s": 60.0} | overrides)
    )
    return OpenAIChatClient(config, server.base_url, cache=cache, ledger=ledger)


def batch() -> list[ChatRequest]:
    return [
        ChatRequest.user("Name a colour.", purpose="genre", params=SHORT, concept_id=1),
        ChatRequest.user("Name an animal.", purpose="genre", params=SHORT, concept_id=2),
        ChatRequest.user("Name a city.", purpose="judge", params=SHORT, concept_id=1),
    ]


@pytest.mark.slow
def test_chat_answer(embedded_server) -> None:
    client = real_client(embedded_server)
    assert isinstance(client, ChatBackend)
    completion = asyncio.run(client.complete(ChatRequest.user("Say hello.", purpose="smoke", params=SHORT)))
    assert completion.text.strip()
    assert completion.model == embedded_server.model
    assert completion.prompt_tokens > 0 and 0 < completion.completion_tokens <= SHORT.max_tokens
    assert completion.cost_usd == 0.0  # a local model is free


@pytest.mark.slow
def test_json_schema_answer_parses_and_validates(embedded_server) -> None:
    client = real_client(embedded_server)
    request = ChatRequest.user(
        "Is the sentence 'The cat sat on the mat.' about cats? Give a rating from 0 to 2 and a short reason.",
        purpose="judge",
        params=SamplingParams(temperature=0.0, max_tokens=48),
        json_schema=RATING_SCHEMA,
    )
    completion = client.complete_sync(request)
    client.close()
    assert client.schema_mode == "json_schema"  # llama.cpp constrains the output itself
    assert completion.parsed["rating"] in (0, 1, 2)
    assert isinstance(completion.parsed["reason"], str)


@pytest.mark.slow
def test_second_run_answers_from_cache_and_ledger_adds_up(embedded_server, tmp_path) -> None:
    requests = batch()
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        first_ledger = Ledger(tmp_path / "ledger.jsonl")
        first = real_client(embedded_server, cache, first_ledger).complete_many_sync(requests, desc="first")
        totals = first_ledger.totals()
        assert (totals.calls, totals.cache_hits) == (3, 0)
        assert totals.prompt_tokens == sum(c.prompt_tokens for c in first) > 0
        assert totals.completion_tokens == sum(c.completion_tokens for c in first) > 0
        by_purpose = first_ledger.totals(by="purpose")
        assert (by_purpose["genre"].calls, by_purpose["judge"].calls) == (2, 1)
        by_concept = first_ledger.totals(by="concept_id")
        assert (by_concept[1].calls, by_concept[2].calls) == (2, 1)
        assert by_concept[1].prompt_tokens == first[0].prompt_tokens + first[2].prompt_tokens

        second_ledger = Ledger(tmp_path / "ledger.jsonl")
        second = real_client(embedded_server, cache, second_ledger).complete_many_sync(
            requests, desc="second"
        )
    assert [c.text for c in second] == [c.text for c in first]
    assert all(c.cached for c in second)
    totals = second_ledger.totals()
    assert (totals.calls, totals.cache_hits, totals.cost_usd) == (0, 3, 0.0)
    # The file keeps both runs; the budget and totals cover this session only.
    assert second_ledger.totals(session_only=False).calls == 3


@pytest.mark.slow
def test_budget_stops_a_batch_before_exceeding_it(embedded_server) -> None:
    max_usd = 0.15
    ledger = Ledger(max_usd=max_usd)
    # $1000 per million tokens: each call costs a few cents, so the budget allows only a few.
    client = real_client(
        embedded_server, ledger=ledger, max_usd=max_usd, input_usd_per_mtok=1000.0, output_usd_per_mtok=1000.0
    )
    requests = [ChatRequest.user(f"Name the number {i}.", purpose="budget", params=SHORT) for i in range(8)]
    with pytest.raises(BudgetExceededError, match="max_usd"):
        client.complete_many_sync(requests)
    client.close()
    totals = ledger.totals()
    assert 1 <= totals.calls < len(requests)
    assert 0 < totals.cost_usd <= max_usd


def test_dry_run_sends_nothing_and_estimates(fault_server: FaultServer, tmp_path) -> None:
    settings = {"endpoint": fault_server.base_url, "model": "gpt-4o-mini", "api_key_env": "AXBENCH_UNSET_KEY"}
    requests = [
        ChatRequest.user(
            f"Write a sentence about topic {i}.", purpose="positives", params=SamplingParams(max_tokens=40)
        )
        for i in range(4)
    ]
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        live = OpenAIChatClient(LLMConfig(**settings), fault_server.base_url, cache=cache)
        asyncio.run(live.complete(requests[0]))
        assert len(fault_server.requests) == 1

        dry = OpenAIChatClient(LLMConfig(**settings, dry_run=True), fault_server.base_url, cache=cache)
        answers = dry.complete_many_sync(requests)
    assert len(fault_server.requests) == 1  # nothing new reached the server
    assert answers[0].cached and answers[0].text == "ok"
    assert all(a.dry_run and a.text == "" for a in answers[1:])
    totals = dry.ledger.totals()
    assert (totals.calls, totals.cache_hits) == (3, 1)
    assert totals.completion_tokens == 3 * 40
    assert totals.prompt_tokens == sum(estimate_prompt_tokens(r) for r in requests[1:])
    expected = (totals.prompt_tokens * 0.15 + totals.completion_tokens * 0.60) / 1e6
    assert totals.cost_usd == pytest.approx(expected)


def test_completion_round_trips_through_cache(tmp_path) -> None:
    request = ChatRequest.user("x", purpose="p", json_schema=RATING_SCHEMA)
    completion = Completion(
        text='{"rating": 1, "reason": "r"}',
        model="m",
        prompt_tokens=3,
        completion_tokens=4,
        cost_usd=0.5,
        parsed={"rating": 1, "reason": "r"},
    )
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        cache.put(request.cache_key("m"), completion, request.purpose)
        hit = cache.get(request.cache_key("m"))
        assert cache.get(request.cache_key("other-model")) is None
    assert hit is not None and hit.cached and hit.cost_usd == 0.0
    assert (hit.text, hit.parsed, hit.prompt_tokens) == (completion.text, completion.parsed, 3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "gpt-4o"}, "not an embedded model"),
        ({"endpoint": "api.openai.com/v1", "model": "gpt-4o"}, "http"),
        ({"structured_output": "xml"}, "structured_output"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_usd": -1.0}, "max_usd"),
        ({"embedded_port": 70000}, "embedded_port"),
    ],
)
def test_config_validation(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        LLMConfig(**overrides)


def test_config_defaults() -> None:
    config = LLMConfig()
    assert config.is_embedded and config.model == "smollm2-135m-instruct"
    assert (config.max_concurrency, config.max_retries, config.timeout_s) == (8, 6, 60.0)


def test_the_cache_does_not_store_a_huge_answer(tmp_path) -> None:
    from axdata.llm import ResponseCache
    from axdata.llm.cache import MAX_CACHED_CHARS
    from axdata.llm.types import Completion

    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        cache.put("big", Completion(text="x" * (MAX_CACHED_CHARS + 1), model="m"), "judge")
        cache.put("small", Completion(text="ok", model="m"), "judge")
        assert cache.get("big") is None and cache.get("small").text == "ok"
