"""Activation collection: prefix skipped, padding ignored, early stop equal to a full forward, caching."""

import pytest
import torch

from axmethods.activations import ActivationCollector, TokenActivations

TEXTS = [("Write a poem about the sea.", "The sea is blue and the sky is wide."),
         ("What is 2 + 2?", "4"),
         ("Explain photosynthesis step by step, please, in detail.", "Plants turn light into sugar.")]


def _transcripts(target):
    return [target.format_transcript(i, o) for i, o in TEXTS]


def test_matches_full_forward_without_prefix_or_padding(tiny_target):
    target = tiny_target
    layer = 0
    collector = ActivationCollector(target, layer, batch_size=3, progress=False)
    acts = collector.collect(_transcripts(target))
    assert acts.n_texts == 3
    for i, text in enumerate(_transcripts(target)):
        ids = torch.tensor([target.encode(text)])
        with torch.inference_mode():
            hidden = target.model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
        expected = hidden[target.prefix_length:]
        assert acts.text(i).shape == expected.shape  # prefix dropped, no padding rows
        torch.testing.assert_close(acts.text(i), expected, atol=1e-4, rtol=1e-4)


def test_stops_after_the_read_layer(tiny_llama_target):
    target = tiny_llama_target
    calls = []
    handle = target.residual_module(1).register_forward_hook(lambda *a: calls.append(1))
    lm_head = target.model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(2))
    try:
        ActivationCollector(target, 0, progress=False).collect(_transcripts(target))
    finally:
        handle.remove()
        lm_head.remove()
    assert calls == []
    assert not target.residual_module(0)._forward_hooks  # the read-out hook is removed


def test_kept_texts_are_computed_once(tiny_llama_target):
    target = tiny_llama_target
    texts = _transcripts(target)
    collector = ActivationCollector(target, 1, batch_size=2, progress=False)
    first = collector.collect(texts, keep=[True, True, False])
    assert collector.forward_texts == 3
    again = collector.collect(texts[:2] + texts[:2])
    assert collector.forward_texts == 3  # cache hits only
    torch.testing.assert_close(again.text(2), first.text(0))
    collector.collect([texts[2]])
    assert collector.forward_texts == 4  # not kept: recomputed


def test_truncation_and_packing_helpers(tiny_llama_target):
    target = tiny_llama_target
    acts = ActivationCollector(target, 1, max_length=target.prefix_length + 5, progress=False).collect(
        _transcripts(target))
    assert acts.lengths.tolist() == [5, 5, 5]
    picked = acts.select([2, 0])
    torch.testing.assert_close(picked.text(0), acts.text(2))
    pooled = acts.max_pool(acts.values[:, :2])
    torch.testing.assert_close(pooled[1], acts.text(1)[:, :2].max(0).values)
    torch.testing.assert_close(acts.segment_sum()[0], acts.text(0).sum(0))
    with pytest.raises(ValueError, match="offsets"):
        TokenActivations(torch.zeros(3, 2), torch.tensor([0, 2]))


def test_autocast_dtype(tiny_llama_target):
    acts = ActivationCollector(tiny_llama_target, 1, dtype=torch.bfloat16, progress=False).collect(
        _transcripts(tiny_llama_target))
    assert acts.values.dtype == torch.bfloat16


def test_keep_all_shares_activations_between_methods(tiny_llama_target):
    collector = ActivationCollector(tiny_llama_target, 1, keep_all=True, progress=False)
    collector.collect(_transcripts(tiny_llama_target))
    collector.collect(_transcripts(tiny_llama_target))
    assert collector.forward_texts == 3
