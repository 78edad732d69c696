"""A steering dictionary as a pyvene intervention generates exactly what our hook-based steering generates."""

from __future__ import annotations

import pytest
import torch

from axdata.concepts import Concept
from axmethods.dictionary import DictionaryError, SteeringDictionary
from axmethods.inference.sampling import SamplingConfig, sample, stop_token_ids
from axmethods.interventions import steer
from axmethods.pyvene_bridge import pyvene_intervention

PROMPTS = ["hello world", "Write a short poem about the sea and the sky."]


def dictionary_for(target, layer: int = 1) -> SteeringDictionary:
    generator = torch.Generator().manual_seed(3)
    return SteeringDictionary(torch.randn(3, target.hidden_size, generator=generator),
                              [Concept(i, f"c{i}") for i in (10, 11, 12)], layer, target.residual_module_path(layer),
                              target.model_id, "DiffMean", calibration=torch.tensor([1.0, 2.0, 4.0]))


def test_the_dictionary_as_pyvene_generates_what_our_steering_generates(tiny_target) -> None:
    target = tiny_target
    dictionary = dictionary_for(target)
    prompts = [target.encode(target.format_prompt(p)) for p in PROMPTS]
    greedy = SamplingConfig(max_new_tokens=8, temperature=0.0)
    with torch.inference_mode():
        with steer(target, dictionary, [11, 11], [1.5, 1.5]):  # α = 1.5 × calibration 2.0
            ours = sample(target, prompts, [0, 1], greedy)
        plain = sample(target, prompts, [0, 1], greedy)
        steered = pyvene_intervention(dictionary, 11, 1.5, target)
        theirs = []
        for prompt in prompts:
            ids = torch.tensor([prompt])
            _, tokens = steered.generate({"input_ids": ids}, unit_locations=None, intervene_on_prompt=True,
                                         max_new_tokens=8, do_sample=False, eos_token_id=stop_token_ids(target),
                                         pad_token_id=target.tokenizer.pad_token_id)
            theirs.append(tokens[0, ids.shape[1]:].tolist())
        # One concept for a whole batch: pyvene's forward over two rows equals two single-row forwards.
        batch = torch.tensor([prompts[0], prompts[0]])
        batched = steered(base={"input_ids": batch}, unit_locations=None)[1].logits
        single = steered(base={"input_ids": batch[:1]}, unit_locations=None)[1].logits
    assert theirs == ours
    assert ours != plain  # the steering changed the generations
    torch.testing.assert_close(batched, single.expand_as(batched))


def test_the_pyvene_intervention_refuses_what_steering_refuses(tiny_llama_target) -> None:
    dictionary = dictionary_for(tiny_llama_target)
    with pytest.raises(DictionaryError, match="not in this DiffMean dictionary"):
        pyvene_intervention(dictionary, 99, 1.0, tiny_llama_target)
    with pytest.raises(DictionaryError, match="no calibration"):
        pyvene_intervention(dictionary.with_calibration(None, {}), 10, 1.0, tiny_llama_target)
