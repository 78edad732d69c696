"""Perplexity of steered generations under the unsteered model (`axmethods.inference.perplexity`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from test_inference import make_dictionary, steering_frame

from axmethods.inference.perplexity import generation_perplexity
from axmethods.inference.sampling import SamplingConfig
from axmethods.inference.steering import DictionarySteerer, run_steering


def _one_at_a_time(target, prompt: list[int], tokens: list[int]) -> float:
    """The definition, one unpadded sequence: exp of the mean negative log-probability of the generated tokens."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = target.model(input_ids=ids).logits[0].double()
    logps = logits.log_softmax(-1)[len(prompt) - 1:-1].gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)
    return float(torch.exp(-logps.mean()))


def test_batched_perplexity_equals_the_definition_and_empty_generations_are_nan(tiny_llama_target) -> None:
    target = tiny_llama_target
    prompts = [target.encode(target.format_prompt(text)) for text in ("Hi", "Write a long poem about the sea")]
    generated = [target.encode("The sea is wide and blue"), target.encode("ok")]
    values = generation_perplexity(target, [*prompts, prompts[0]], [*generated, []], batch_size=3)
    expected = [_one_at_a_time(target, p, g) for p, g in zip(prompts, generated)]
    assert np.allclose(values[:2], expected, rtol=1e-4)
    assert np.isnan(values[2]) and len(values) == 3
    assert values[0] != values[1]


def test_steering_rows_carry_the_unsteered_perplexity_of_what_was_generated(tiny_llama_target, tmp_path: Path,
                                                                             monkeypatch) -> None:
    """The column is the *unsteered* model's view of the steered tokens (the steering hook is off when it is
    measured), against the original instruction's prompt."""
    from axmethods.inference import steering as steering_module

    target = tiny_llama_target
    sampled: list[list[int]] = []

    def recording_sample(*args, **kwargs):
        tokens = real_sample(*args, **kwargs)
        sampled.extend(tokens)
        return tokens

    real_sample = steering_module.sample
    monkeypatch.setattr(steering_module, "sample", recording_sample)
    dictionary = make_dictionary(target, calibration=torch.tensor([1.0, 2.0, 3.0]))
    frame = run_steering(target, DictionarySteerer(dictionary), steering_frame(n_concepts=1, prompts=1),
                         tmp_path / "s.parquet", factors=[8.0], sampling=SamplingConfig(max_new_tokens=8),
                         progress=False)
    assert len(frame) == 1 and len(sampled) == 1
    row = frame.iloc[0]
    prompt = target.encode(target.format_prompt(row["instruction"]))
    assert np.isclose(row["perplexity"], _one_at_a_time(target, prompt, sampled[0]), rtol=1e-4)
    assert pd.read_parquet(tmp_path / "s.parquet")["perplexity"].tolist() == frame["perplexity"].tolist()
