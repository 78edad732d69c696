"""The client's retry, cache, ledger and structured-output behaviour against a scripted fault server."""

from __future__ import annotations

import asyncio
import time

import pytest
from fixtures_llm import FaultServer, Reply, error, malformed, ok, rate_limited, rejects_response_format, slow

from axdata.llm import (
    BudgetExceededError,
    ChatRequest,
    LLMConfig,
    LLMError,
    LLMRequestError,
    OpenAIChatClient,
    ResponseCache,
    SamplingParams,
    StructuredOutputError,
)
from axdata.llm.ledger import Ledger
from axdata.llm.server import free_port

SCHEMA = {
    "type": "object",
    "properties": {"rating": {"type": "integer", "minimum": 0, "maximum": 2}, "reason": {"type": "string"}},
    "required": ["rating", "reason"],
}


def make_client(base_url: str, cache: ResponseCache | None = None, **overrides) -> OpenAIChatClient:
    settings = {
        "endpoint": base_url,
        "model": "fault-model",
        "backoff_base_s": 0.01,
        "backoff_max_s": 5.0,
        "timeout_s": 5.0,
        "max_retries": 6,
    } | overrides
    return OpenAIChatClient(LLMConfig(**settings), base_url, cache=cache)


def ask(client: OpenAIChatClient, text: str = "hello", **kwargs):
    return asyncio.run(client.complete(ChatRequest.user(text, purpose="faults", **kwargs)))


@pytest.mark.parametrize(
    "fault",
    [
        rate_limited(),
        error(500),
        error(503),
        slow(1.0),
        malformed(),
        Reply(200, {"choices": []}),
        error(408),
        error(409),
    ],
    ids=["429", "500", "503", "timeout", "malformed-json", "no-choices", "408", "409"],
)
def test_each_fault_is_retried_then_succeeds(fault_server: FaultServer, fault: Reply, tmp_path) -> None:
    fault_server.push(fault)
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        client = make_client(fault_server.base_url, cache, timeout_s=0.3)
        completion = ask(client)
        assert completion.text == "ok" and not completion.cached
        assert len(fault_server.requests) == 2
        assert len(cache) == 1
        totals = client.ledger.totals()
        assert (totals.calls, totals.prompt_tokens, totals.completion_tokens) == (1, 11, 3)


def test_all_faults_in_a_row_then_success(fault_server: FaultServer) -> None:
    fault_server.push(rate_limited(), error(500), error(503), slow(1.0), malformed())
    client = make_client(fault_server.base_url, timeout_s=0.3)
    assert ask(client).text == "ok"
    assert len(fault_server.requests) == 6
    assert len(client.ledger.entries) == 1


@pytest.mark.parametrize(
    ("header", "value", "seconds"), [("Retry-After", "1", 1.0), ("retry-after-ms", "400", 0.4)]
)
def test_retry_after_is_honoured(fault_server: FaultServer, header: str, value: str, seconds: float) -> None:
    fault_server.push(rate_limited(value, header))
    client = make_client(fault_server.base_url)
    start = time.monotonic()
    assert ask(client).text == "ok"
    assert time.monotonic() - start >= seconds
    assert len(fault_server.requests) == 2


def test_exhausted_retries_raise_naming_endpoint_and_purpose_and_cache_nothing(
    fault_server, tmp_path
) -> None:
    fault_server.default = error(503, "overloaded")
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        client = make_client(fault_server.base_url, cache, max_retries=2)
        with pytest.raises(LLMRequestError) as info:
            ask(client)
        assert len(cache) == 0
    assert fault_server.base_url in str(info.value) and "'faults'" in str(info.value)
    assert "503" in str(info.value)
    assert len(fault_server.requests) == 3
    assert client.ledger.entries == []
    assert client.ledger._reserved == 0


def test_non_retryable_400_fails_at_once(fault_server: FaultServer) -> None:
    fault_server.push(error(400, "messages: invalid role"))
    client = make_client(fault_server.base_url)
    with pytest.raises(LLMRequestError, match="HTTP 400"):
        ask(client)
    assert len(fault_server.requests) == 1


def test_connection_refused_is_retried_then_fails() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    client = make_client(base_url, max_retries=2)
    with pytest.raises(LLMRequestError, match="connection failed") as info:
        ask(client)
    assert base_url in str(info.value)
    assert "3 attempts" in str(info.value)


def test_structured_output_falls_back_to_prompt_mode(fault_server: FaultServer) -> None:
    fault_server.push(rejects_response_format())
    fault_server.default = ok(
        'Sure, here it is:\n```json\n{"rating": 2, "reason": "about cats"}\n```\nAnything else?'
    )
    client = make_client(fault_server.base_url, structured_output="auto")
    first = ask(client, "Rate it.", json_schema=SCHEMA)
    assert first.parsed == {"rating": 2, "reason": "about cats"}
    assert client.schema_mode == "prompt"
    rejected, retried = fault_server.requests
    assert rejected["response_format"]["type"] == "json_schema"
    assert rejected["response_format"]["json_schema"]["schema"] == SCHEMA
    assert "response_format" not in retried
    assert retried["messages"][-1]["content"].startswith("Rate it.")
    assert '"rating"' in retried["messages"][-1]["content"]
    # The client remembers: later requests skip the probe.
    ask(client, "Rate another.", json_schema=SCHEMA)
    assert len(fault_server.requests) == 3 and "response_format" not in fault_server.requests[-1]


def test_json_schema_mode_does_not_fall_back(fault_server: FaultServer) -> None:
    fault_server.push(rejects_response_format())
    client = make_client(fault_server.base_url, structured_output="json_schema")
    with pytest.raises(LLMRequestError, match="HTTP 400"):
        ask(client, json_schema=SCHEMA)
    assert len(fault_server.requests) == 1


def test_invalid_json_answers_are_retried_then_raise(fault_server: FaultServer, tmp_path) -> None:
    fault_server.default = ok('{"rating": 7, "reason": "too high"}')
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        client = make_client(fault_server.base_url, cache, max_invalid_retries=2)
        with pytest.raises(StructuredOutputError, match="maximum") as info:
            ask(client, json_schema=SCHEMA)
        assert len(cache) == 0
    assert info.value.text == '{"rating": 7, "reason": "too high"}'
    assert len(fault_server.requests) == 3
    # Each invalid answer arrived and was paid for: ledgered (as invalid) and reported on the error.
    assert [entry["valid"] for entry in client.ledger.entries] == [False] * 3
    assert info.value.answers == 3


def test_an_invalid_answer_to_a_deterministic_request_is_not_asked_again(fault_server: FaultServer) -> None:
    fault_server.default = ok('{"rating": 7, "reason": "too high"}')
    client = make_client(fault_server.base_url, max_invalid_retries=5)
    with pytest.raises(StructuredOutputError, match="none at temperature 0") as info:
        ask(client, json_schema=SCHEMA, params=SamplingParams(temperature=0.0))
    assert len(fault_server.requests) == 1 and info.value.answers == 1


def test_invalid_json_then_valid_succeeds(fault_server: FaultServer) -> None:
    fault_server.push(ok("I think it is a 2."), ok('{"rating": 1}'))
    fault_server.default = ok('{"rating": 1, "reason": "ok"}')
    client = make_client(fault_server.base_url)
    completion = ask(client, json_schema=SCHEMA)
    assert completion.parsed == {"rating": 1, "reason": "ok"}
    assert len(fault_server.requests) == 3
    totals = client.ledger.totals()
    assert (totals.calls, totals.invalid_answers, completion.answers) == (3, 2, 3)  # one ledger line per answer


def test_sampling_params_and_model_go_through(fault_server: FaultServer) -> None:
    client = make_client(fault_server.base_url)
    ask(client, params=SamplingParams(temperature=0.3, max_tokens=17, top_p=0.9, seed=5))
    ask(client, params=SamplingParams())
    with_seed, without_seed = fault_server.requests
    assert (
        with_seed["model"],
        with_seed["temperature"],
        with_seed["max_tokens"],
        with_seed["top_p"],
        with_seed["seed"],
    ) == ("fault-model", 0.3, 17, 0.9, 5)
    assert "seed" not in without_seed


def test_concurrency_is_bounded_and_order_kept(fault_server: FaultServer) -> None:
    fault_server.default = Reply(200, ok("x").body, delay_s=0.1)
    client = make_client(fault_server.base_url, max_concurrency=2)
    requests = [ChatRequest.user(f"q{i}", purpose="faults") for i in range(6)]
    answers = client.complete_many_sync(requests)
    client.close()
    assert len(answers) == 6 and fault_server.max_in_flight == 2
    sent = [body["messages"][0]["content"] for body in fault_server.requests]
    assert sorted(sent) == [f"q{i}" for i in range(6)]


def test_budget_is_checked_before_any_request(fault_server: FaultServer) -> None:
    client = make_client(fault_server.base_url, input_usd_per_mtok=1e6, output_usd_per_mtok=1e6, max_usd=1.0)
    with pytest.raises(BudgetExceededError, match="max_usd"):
        ask(client)
    assert fault_server.requests == []


def test_budget_counts_answers_that_fail_their_schema(fault_server: FaultServer, tmp_path) -> None:
    """An out-of-schema answer is paid for: the budget guard stops the retries, the ledger has every answer."""
    fault_server.default = ok('{"rating": 7, "reason": "too high"}', prompt_tokens=1000, completion_tokens=1000)
    # $1 per million tokens each way: every answer costs $0.002; a request's worst case is under $0.0015.
    ledger = Ledger(tmp_path / "ledger.jsonl", max_usd=0.005)
    client = OpenAIChatClient(LLMConfig(endpoint=fault_server.base_url, model="fault-model", backoff_base_s=0.0,
                                        max_invalid_retries=6, input_usd_per_mtok=1.0, output_usd_per_mtok=1.0,
                                        max_usd=0.005), fault_server.base_url, ledger=ledger)
    with pytest.raises(BudgetExceededError):
        ask(client, json_schema=SCHEMA, params=SamplingParams(max_tokens=16))
    paid = len(fault_server.requests)
    assert paid == 3  # $0.002, $0.004, $0.006 spent: the guard refuses the fourth attempt before sending it
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    assert len(lines) == paid and client.ledger.totals().cost_usd == pytest.approx(0.002 * paid)


def test_missing_key_for_remote_endpoint_names_the_variable(monkeypatch) -> None:
    monkeypatch.delenv("AXBENCH_TEST_KEY", raising=False)
    config = LLMConfig(
        endpoint="https://api.example.com/v1", model="gpt-4o-mini", api_key_env="AXBENCH_TEST_KEY"
    )
    with pytest.raises(LLMError, match="AXBENCH_TEST_KEY"):
        OpenAIChatClient(config, config.endpoint)
    monkeypatch.setenv("AXBENCH_TEST_KEY", "sk-test")
    assert OpenAIChatClient(config, config.endpoint).prices.input_usd_per_mtok == 0.15
