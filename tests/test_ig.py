"""Integrated Gradients and Input×Gradient (`axmethods.methods.ig`) on tiny random models: the head the Probe trains,
the attribution arithmetic (a hand-computed gradient × input; IG's completeness), and the latent stage's routing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from test_methods import CONCEPTS, _train_frame

from axmethods.contract import DictionaryError
from axmethods.hooks import layer_outputs
from axmethods.inference.latent import calibrate, latent_inference
from axmethods.methods.ig import (
    AttributionDetector,
    HeadStates,
    InputXGradients,
    IntegratedGradients,
    path_attribution,
    space_baseline,
)
from axmethods.models import pad_batch, pad_token_id
from axmethods.registry import get_method
from axmethods.results import load_result

QUICK = {"num_train_epochs": 2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
         "learning_rate": 5e-2}


def _batch(target, texts):
    ids = [target.encode(target.format_transcript("Write something.", text)) for text in texts]
    return pad_batch(ids, pad_token_id(target), side="right")


def _head(target, n, scale=0.3, seed=0):
    # Small logits keep the sigmoid away from saturation, so the gradients are not ~0.
    return torch.randn(n, target.hidden_size, generator=torch.Generator().manual_seed(seed)) * scale \
        / target.hidden_size ** 0.5


def test_head_states_are_the_last_tokens_final_hidden_state(tiny_llama_target):
    target = tiny_llama_target
    texts = [target.format_transcript("Hi.", "The sea is wide."), target.format_transcript("Hi.", "Paris.")]
    states = HeadStates(target, 0, batch_size=1).collect(texts)
    assert states.values.shape == (2, target.hidden_size) and states.lengths.tolist() == [1, 1]
    for row, text in zip(states.values, texts):
        ids = torch.tensor([target.encode(text)])
        with torch.no_grad():
            final = target.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
        torch.testing.assert_close(row, final.float(), rtol=1e-5, atol=1e-5)


def test_ixg_equals_a_hand_computed_gradient_times_input_at_the_last_block(tiny_llama_target):
    """At the last block, f = sigmoid(w · RMSNorm(h_last)): its gradient is closed-form and only the last token's."""
    target = tiny_llama_target
    layer = target.num_layers - 1
    input_ids, attention_mask = _batch(target, ["The sea is wide and blue."])
    head = _head(target, 1, scale=3.0)
    result = path_attribution(target, layer, input_ids, attention_mask, head, torch.ones(1), None)

    hidden = layer_outputs(target, [layer], input_ids, attention_mask)[layer][0, -1].float().clone()  # pre-norm
    norm = target.model.model.norm
    gain, eps, d = norm.weight.detach().float(), norm.variance_epsilon, hidden.shape[0]
    rms = torch.sqrt(hidden.pow(2).mean() + eps)
    z = (head[0] * gain * hidden / rms).sum()
    sigma = torch.sigmoid(z)
    # d/dh [w·(g⊙h)/rms] = (w⊙g)/rms − (w·(g⊙h)) h / (d rms³)
    gradient = sigma * (1 - sigma) * (head[0] * gain / rms - (head[0] * gain * hidden).sum() * hidden / (d * rms ** 3))
    expected = (hidden * gradient).abs().sum()

    scores = result.token_scores[0]
    torch.testing.assert_close(scores[-1], expected, rtol=1e-4, atol=1e-7)
    assert torch.all(scores[:-1] == 0)  # earlier tokens do not reach the last token's state after the last block
    torch.testing.assert_close(result.probability[0, 0], sigma, rtol=1e-5, atol=1e-6)


def test_ig_attributions_sum_to_the_change_of_the_probability(tiny_target):
    """Completeness: sum of (h − b) ⊙ mean path gradient → f(h) − f(b) as the path steps grow (here through a
    block, the final norm and attention over all tokens, on each tiny architecture)."""
    target = tiny_target
    input_ids, attention_mask = _batch(target, ["The sea is wide and blue.", "Paris."])
    head = _head(target, 2, scale=4.0)
    # A baseline of the residuals' own scale: from AxBench's (a small embedding) the path starts near 0, where the
    # scale-invariant norms make f jump within a few steps' width and the quadrature needs thousands of steps.
    baseline = layer_outputs(target, [0], input_ids, attention_mask)[0][0].float().mean(0).clone()

    def error(steps: int) -> float:
        result = path_attribution(target, 0, input_ids, attention_mask, head, torch.linspace(0, 1, steps), baseline)
        change = result.probability[-1] - result.probability[0]
        assert change.abs().max() > 0.05  # the check is not vacuous
        return float((result.signed.sum(dim=(1, 2)) - change).abs().max() / change.abs().max())

    fine = error(400)
    assert fine < 0.01
    assert error(2) > fine  # a 2-point path is a coarse quadrature: the steps matter


def test_ig_and_ixg_train_the_probe_head_and_save_as_detection_only_results(tiny_llama_target, tmp_path):
    target = tiny_llama_target
    train = _train_frame()
    spec = get_method("IntegratedGradients")  # trained the way the train stage trains it
    ig = spec.train(target, lambda split: train if split == "train" else None, CONCEPTS, 0, spec.settings(QUICK))
    assert spec.in_layer_folder and not spec.steers and spec.detects
    ixg = InputXGradients(QUICK).fit(target, train, CONCEPTS, 0)
    for result, name in ((ig, "ig"), (ixg, "ixg")):
        assert isinstance(result, AttributionDetector) and result.method == name
        assert result.weight.shape == (2, target.hidden_size) and result.layer == 0
        torch.testing.assert_close(result.weight.norm(dim=1), torch.ones(2))  # the Probe's unit-norm head
        assert result.detector == "attribution" and not result.steers and not result.needs_calibration
    torch.testing.assert_close(ig.weight, ixg.weight)  # one head, two read-outs
    assert ig.config["integration_steps"] == 10 and ig.config["attribution"] == "ig"

    loaded = load_result(ig.save_pretrained(tmp_path / "ig"))
    assert isinstance(loaded, AttributionDetector) and loaded.config["attribution"] == "ig"
    torch.testing.assert_close(loaded.weight, ig.weight)
    with pytest.raises(DictionaryError, match="detection-only"):
        loaded.steerer()
    assert get_method("InputXGradients").name == "ixg"


def test_latent_inference_scores_attributions_in_both_modes(tiny_llama_target):
    target = tiny_llama_target
    ig = IntegratedGradients({**QUICK, "integration_steps": 3}).fit(target, _train_frame(), CONCEPTS, 0)
    ixg = dataclasses.replace(ig, method="ixg", config={**ig.config, "attribution": "ixg"})  # the same head
    latent = pd.DataFrame({
        "input": ["Write something."] * 4, "output": ["The deep sea.", "Hello world.", "Paris at night.", "x = 1"],
        "concept_id": [0, 0, 1, 1], "category": ["positive", "negative", "positive", "negative"],
        "output_concept": ["the sea", "EEEEE", "Paris", "EEEEE"], "concept_genre": ["text"] * 4,
        "dataset_category": ["instruction"] * 4})
    scores = latent_inference(target, [ig, ixg], latent, batch_size=6, progress=False)
    assert len(scores) == 8 and (scores["score"] >= 0).all() and scores["max_token"].notna().all()
    assert (scores["max_token_index"] >= target.prefix_length).all()

    # The stage's numbers are the detector's own: IxG of row 2 for concept 1, recomputed directly.
    ids = [target.encode(target.format_transcript(i, o)) for i, o in zip(latent["input"], latent["output"])]
    direct, where = ixg.score_pairs(target, ids, np.array([2]), np.array([1]), progress=False)
    row = scores[(scores["method"] == "ixg") & (scores["row_id"] == 2)].iloc[0]
    assert row["score"] == pytest.approx(float(direct[0]), rel=1e-5) and row["max_token_index"] == where[0]
    # IG's row: AxBench's path (3 points here, both ends) from the embedding of a space, max over the content tokens.
    input_ids, attention_mask = pad_batch([ids[2]], pad_token_id(target), side="right")
    by_hand = path_attribution(target, 0, input_ids, attention_mask, ig.weight[1:2], torch.linspace(0, 1, 3),
                               space_baseline(target)).token_scores[0, target.prefix_length:].max()
    row = scores[(scores["method"] == "ig") & (scores["row_id"] == 2)].iloc[0]
    assert row["score"] == pytest.approx(float(by_hand), rel=1e-5)

    pool = latent[latent["category"] == "negative"].assign(concept_id=-1)
    imbalance = latent_inference(target, [ig], latent, mode="latent_imbalance", imbalance_pool=pool,
                                 batch_size=6, progress=False)
    assert len(imbalance) == 2 * len(pool) + 2  # every concept on the pool, plus each concept's own positives
    assert calibrate(ig, scores) is ig  # nothing to calibrate: it never steers
