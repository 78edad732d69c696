"""The in-process chat backend: the target model answering instructions (AxBench's shared negatives)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from axdata.llm.cache import ResponseCache
from axdata.llm.ledger import Ledger
from axdata.llm.types import ChatBackend, ChatRequest, SamplingParams
from axmethods.chat_backend import TransformersChatBackend
from axmethods.inference import sampling

GREEDY = SamplingParams(temperature=0.0, max_tokens=10)
INSTRUCTIONS = [
    "hi",
    "Write a short poem about the sea and the sky, and make every line rhyme with the one before.",
    "What is the capital of France?",
    "apple",
    "Explain how photosynthesis works in plants, step by step, for a ten-year-old.",
]


def _requests(params: SamplingParams = GREEDY, instructions: list[str] = INSTRUCTIONS) -> list[ChatRequest]:
    return [ChatRequest.user(text, purpose="negatives", params=params) for text in instructions]


def _answer(backend: TransformersChatBackend, requests: list[ChatRequest]) -> list[str]:
    return [completion.text for completion in asyncio.run(backend.complete_many(requests))]


def test_is_a_chat_backend(tiny_llama_target):
    backend = TransformersChatBackend(tiny_llama_target)
    assert isinstance(backend, ChatBackend)
    assert backend.model_name == tiny_llama_target.spec


def test_batched_answers_keep_request_order_and_equal_single_answers(tiny_target):
    requests = _requests()
    batched = asyncio.run(TransformersChatBackend(tiny_target, batch_size=8).complete_many(requests))
    alone = [asyncio.run(TransformersChatBackend(tiny_target).complete(request)) for request in requests]
    assert [c.text for c in batched] == [c.text for c in alone]
    assert len({c.text for c in batched}) > 1  # the order check means something
    for request, completion in zip(requests, batched):
        prompt_ids = tiny_target.tokenizer.apply_chat_template(
            [dict(m) for m in request.messages], add_generation_prompt=True, return_dict=False
        )
        assert completion.prompt_tokens == len(prompt_ids)
        assert 1 <= completion.completion_tokens <= GREEDY.max_tokens
        assert completion.finish_reason in ("stop", "length")
        assert completion.model == tiny_target.spec and completion.cost_usd == 0.0 and not completion.cached


def test_greedy_equals_transformers_generate(tiny_target):
    requests = _requests()
    answers = _answer(TransformersChatBackend(tiny_target, batch_size=2), requests)
    for request, answer in zip(requests, answers):
        inputs = tiny_target.tokenizer.apply_chat_template(
            [dict(m) for m in request.messages], add_generation_prompt=True, return_tensors="pt"
        )
        with torch.inference_mode():
            out = tiny_target.model.generate(**inputs, max_new_tokens=GREEDY.max_tokens, do_sample=False)
        reference = tiny_target.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert answer == reference.strip()


def test_seeded_sampling_reproduces_whatever_the_batch(tiny_llama_target):
    seeded = _requests(SamplingParams(temperature=1.0, max_tokens=10, seed=7))
    in_one_batch = _answer(TransformersChatBackend(tiny_llama_target, batch_size=8), seeded)
    one_by_one = _answer(TransformersChatBackend(tiny_llama_target, batch_size=1), seeded)
    reversed_batch = _answer(TransformersChatBackend(tiny_llama_target, batch_size=3), seeded[::-1])[::-1]
    assert in_one_batch == one_by_one == reversed_batch
    other_seed = _answer(TransformersChatBackend(tiny_llama_target),
                         _requests(SamplingParams(temperature=1.0, max_tokens=10, seed=8)))
    greedy = _answer(TransformersChatBackend(tiny_llama_target), _requests())
    assert other_seed != in_one_batch and greedy != in_one_batch


def test_top_k_one_samples_the_greedy_answer_under_its_own_cache_key(tiny_llama_target):
    sampled = _requests(SamplingParams(temperature=1.0, max_tokens=10, seed=7))
    top_one = TransformersChatBackend(tiny_llama_target, top_k=1)
    assert _answer(top_one, sampled) == _answer(TransformersChatBackend(tiny_llama_target), _requests())
    assert _answer(TransformersChatBackend(tiny_llama_target, top_k=0), sampled) != _answer(top_one, sampled)
    assert top_one._cache_model != TransformersChatBackend(tiny_llama_target)._cache_model
    with pytest.raises(ValueError, match="top_k"):
        TransformersChatBackend(tiny_llama_target, top_k=-1)


def test_stops_at_end_of_turn_and_drops_it(tiny_gemma2_dir, monkeypatch):
    from axmethods.models import load_target_model

    target = load_target_model(str(tiny_gemma2_dir))
    end_of_turn = target.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    word = target.encode("apple")[0]
    steps = {"n": 0}

    def pick(logits, uniforms, config):
        steps["n"] += 1
        return torch.full((logits.shape[0],), end_of_turn if steps["n"] == 3 else word, device=logits.device)

    monkeypatch.setattr(sampling, "draw", pick)
    (completion,) = asyncio.run(TransformersChatBackend(target).complete_many(_requests(instructions=["hi"])))
    assert completion.finish_reason == "stop"
    assert completion.completion_tokens == 3
    assert completion.text == target.tokenizer.decode([word, word])


def test_cache_hits_skip_generation_and_ledger_counts(tiny_llama_target, tmp_path, monkeypatch):
    requests = _requests()
    ledger = Ledger(tmp_path / "ledger.jsonl")
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        first = asyncio.run(TransformersChatBackend(tiny_llama_target, cache=cache, ledger=ledger)
                            .complete_many(requests, desc="negatives"))
        assert len(cache) == len(requests)

        def no_generation(self, jobs):
            raise AssertionError("a cached request was generated again")

        monkeypatch.setattr(TransformersChatBackend, "_generate", no_generation)
        second = asyncio.run(TransformersChatBackend(tiny_llama_target, cache=cache, ledger=ledger)
                             .complete_many(requests))
    assert [c.text for c in second] == [c.text for c in first]
    assert all(c.cached for c in second) and not any(c.cached for c in first)
    totals = ledger.totals()
    assert totals.calls == len(requests) and totals.cache_hits == len(requests)
    assert totals.prompt_tokens == sum(c.prompt_tokens for c in first)
    assert totals.completion_tokens == sum(c.completion_tokens for c in first)
    assert totals.cost_usd == 0.0
    assert len(Ledger(tmp_path / "ledger.jsonl").entries) == 2 * len(requests)


def test_identical_requests_are_generated_once(tiny_llama_target, monkeypatch):
    generated_rows = []
    original = TransformersChatBackend._generate

    def counting(self, jobs):
        generated_rows.extend(job.request for job in jobs)
        return original(self, jobs)

    monkeypatch.setattr(TransformersChatBackend, "_generate", counting)
    ledger = Ledger()
    requests = _requests(instructions=["hi", "apple", "hi"])
    answers = asyncio.run(TransformersChatBackend(tiny_llama_target, ledger=ledger).complete_many(requests))
    assert len(generated_rows) == 2
    assert answers[0].text == answers[2].text and answers[2].cached
    assert ledger.totals().calls == 2 and ledger.totals().cache_hits == 1


def test_unsupported_requests_are_refused(tiny_llama_target):
    backend = TransformersChatBackend(tiny_llama_target)
    with pytest.raises(ValueError, match="json_schema"):
        asyncio.run(backend.complete(ChatRequest.user("x", purpose="judge", json_schema={"type": "object"})))
    with pytest.raises(ValueError, match="max_tokens=0"):
        asyncio.run(backend.complete(ChatRequest.user("x", purpose="p", params=SamplingParams(max_tokens=0))))
    with pytest.raises(ValueError, match="batch_size"):
        TransformersChatBackend(tiny_llama_target, batch_size=0)


@pytest.mark.slow
def test_smollm2_answers_an_instruction(smollm2_loads):
    backend = TransformersChatBackend(smollm2_loads.target, batch_size=2)
    params = SamplingParams(temperature=0.0, max_tokens=32)
    answers = asyncio.run(backend.complete_many(_requests(params, ["What is the capital of France?",
                                                                   "Name three colours."])))
    assert all(answer.text for answer in answers)
    assert "paris" in answers[0].text.lower()
    assert "<|im_end|>" not in answers[0].text
