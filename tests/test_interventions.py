"""Interventions: the kinds' algebra, per-row steering, hooks vs pyvene, hook removal, prefix positions."""

from __future__ import annotations

import pytest
import torch

from axdata.concepts import Concept
from axmethods.dictionary import SteeringDictionary
from axmethods.hooks import hook_output
from axmethods.interventions import (
    INTERVENTION_KINDS,
    INTERVENTIONS,
    InterventionError,
    RowSteering,
    steer,
    steering_hooks,
)
from axmethods.models import pad_batch
from axmethods.pyvene_bridge import pyvene_steering_model

PROMPTS = ["hello world", "Write a short poem about the sea and the sky.", "What is the capital of France?"]


def dictionary_for(target, layer: int = 0, n: int = 3) -> SteeringDictionary:
    generator = torch.Generator().manual_seed(1)
    return SteeringDictionary(torch.randn(n, target.hidden_size, generator=generator),
                              [Concept(i, f"c{i}") for i in range(n)], layer, target.residual_module_path(layer),
                              target.model_id, "DiffMean", calibration=torch.tensor([1.0, 2.0, 4.0])[:n])


def batch(target, prompts=PROMPTS, side="left"):
    return pad_batch([target.encode(target.format_prompt(p)) for p in prompts], target.tokenizer.pad_token_id, side)


def test_kinds_algebra() -> None:
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 8, generator=generator)
    v = torch.randn(2, 8, generator=generator)
    alpha = torch.tensor([3.0, -1.0])
    u = v / v.norm(dim=-1, keepdim=True)
    def project(x):
        return (x * u[:, None]).sum(-1)
    assert torch.allclose(RowSteering(v, alpha, "addition").apply(h), h + alpha[:, None, None] * v[:, None])
    assert torch.allclose(project(RowSteering(v, alpha, "clamp").apply(h)), alpha[:, None].expand(2, 5), atol=1e-5)
    assert torch.allclose(project(RowSteering(v, alpha, "ablate").apply(h)), torch.zeros(2, 5), atol=1e-5)
    removed = h - torch.relu(project(h))[..., None] * u[:, None]
    assert torch.allclose(RowSteering(v, alpha, "subtract_add").apply(h), removed + alpha[:, None, None] * v[:, None])
    thresholded = RowSteering(v, alpha, "threshold").apply(h)
    below = (h * v[:, None]).sum(-1) < alpha[:, None]
    assert torch.allclose(thresholded[below], (h + alpha[:, None, None] * v[:, None])[below])
    assert torch.equal(thresholded[~below], h[~below])
    with pytest.raises(InterventionError, match="unknown"):
        RowSteering(v, alpha, "rotate")
    with pytest.raises(InterventionError, match="3 rows"):
        RowSteering(v, alpha).apply(torch.randn(3, 5, 8))


@pytest.mark.parametrize("kind", INTERVENTION_KINDS)
def test_pyvene_and_hook_give_identical_logits_and_generations(tiny_target, kind: str) -> None:
    target = tiny_target
    dictionary = dictionary_for(target)
    steering = RowSteering.from_dictionary(dictionary, [0, 1, 2], [2.0, -1.0, 3.0], kind)
    input_ids, attention_mask = batch(target)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    generate = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": target.tokenizer.pad_token_id}
    with torch.inference_mode():
        with steering_hooks(target, 0, steering):
            hook_logits = target.model(**inputs).logits
            hook_tokens = target.model.generate(**inputs, **generate)
        intervenable = pyvene_steering_model(target, 0, steering)
        pyvene_logits = intervenable(base=inputs, unit_locations=None)[1].logits
        _, pyvene_tokens = intervenable.generate(inputs, unit_locations=None, intervene_on_prompt=True, **generate)
        plain_logits = target.model(**inputs).logits
    assert torch.equal(hook_logits, pyvene_logits)
    assert torch.equal(hook_tokens, pyvene_tokens)
    assert not torch.allclose(hook_logits, plain_logits)  # the intervention did something


def test_hooks_are_removed_also_on_exceptions(tiny_llama_target) -> None:
    target = tiny_llama_target
    dictionary = dictionary_for(target)
    input_ids, attention_mask = batch(target)
    with torch.inference_mode():
        before = target.model(input_ids=input_ids, attention_mask=attention_mask).logits
        with pytest.raises(RuntimeError, match="boom"), steer(target, dictionary, [0, 1, 2], [5.0, 5.0, 5.0]):
            raise RuntimeError("boom")
        with pytest.raises(InterventionError, match="built for 3"), steer(target, dictionary, [0, 1, 2], [5.0] * 3):
            target.model(input_ids=input_ids[:2], attention_mask=attention_mask[:2])
        after = target.model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert not target.residual_module(0)._forward_hooks
    assert torch.equal(before, after)


def test_hook_output_rewraps_tuples_and_is_removed_on_error() -> None:
    class Pair(torch.nn.Module):
        def forward(self, x: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, str]:
            return x * scale, "kept"

    module, seen = Pair(), []

    def double(hidden, call):
        seen.append((call.module is module, call.args, call.kwargs))
        return hidden * 2

    with hook_output(module, double):
        hidden, extra = module(torch.ones(2), scale=3.0)
    assert torch.equal(hidden, torch.full((2,), 6.0)) and extra == "kept"
    assert seen[0][0] and seen[0][2] == {"scale": 3.0}
    with hook_output(module, lambda hidden, call: None):  # None leaves the output as it was
        assert torch.equal(module(torch.ones(2))[0], torch.ones(2))
    with pytest.raises(RuntimeError, match="boom"), hook_output(module, double):
        raise RuntimeError("boom")
    assert not module._forward_hooks


def test_a_registered_kind_steers(monkeypatch) -> None:
    monkeypatch.setitem(INTERVENTIONS, "double", lambda h, v, u, alpha: 2 * h)
    h = torch.randn(2, 3, 4)
    assert torch.equal(RowSteering(torch.randn(2, 4), torch.ones(2), "double").apply(h), 2 * h)


def test_heterogeneous_batch_equals_per_row_steering(tiny_target) -> None:
    target = tiny_target
    dictionary = dictionary_for(target)
    concepts, factors = [2, 0, 1], [1.5, -2.0, 0.5]
    input_ids, attention_mask = batch(target)
    with torch.inference_mode():
        with steer(target, dictionary, concepts, factors):
            together = target.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1]
        for row, (concept, factor) in enumerate(zip(concepts, factors)):
            alone_ids = torch.tensor([target.encode(target.format_prompt(PROMPTS[row]))])
            with steer(target, dictionary, [concept], [factor]):
                alone = target.model(input_ids=alone_ids).logits[:, -1]
            assert torch.allclose(together[row], alone[0], atol=1e-4), row


def test_after_prefix_leaves_the_chat_prefix_untouched(tiny_target) -> None:
    target = tiny_target
    dictionary = dictionary_for(target)
    input_ids, attention_mask = batch(target, side="right")
    captured = {}
    # Block 1's input is block 0's output after every hook on block 0 has run.
    capture = target.residual_module(1).register_forward_pre_hook(lambda m, a: captured.update(h=a[0]))
    with torch.inference_mode():
        target.model(input_ids=input_ids, attention_mask=attention_mask)
        plain = captured["h"]
        with steer(target, dictionary, [0, 1, 2], [3.0, 3.0, 3.0], positions="after_prefix"):
            target.model(input_ids=input_ids, attention_mask=attention_mask)
    capture.remove()
    steered = captured["h"]
    prefix = target.prefix_length
    assert torch.equal(steered[:, :prefix], plain[:, :prefix])
    assert not torch.allclose(steered[:, prefix:], plain[:, prefix:])
