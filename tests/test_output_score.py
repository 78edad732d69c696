"""Output scores (axmethods.output_score): the paper's definition on a tiny random model, batching, the
dictionary round trip and `axbench dictionary output-score`."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from axdata.concepts import Concept
from axmethods.dictionary import DictionaryError, SteeringDictionary
from axmethods.models import load_target_model
from axmethods.output_score import (
    OutputScoreSettings,
    dictionary_output_scores,
    logit_lens_tokens,
    output_scores,
    prompt_ids,
)

LAYER = 1


@pytest.fixture(scope="module")
def target(tiny_gemma2_dir):
    """The tiny Gemma-2 with its unembedding scaled up: random init (std 0.02) gives near-uniform next-token
    distributions, in which no direction can score; a trained model's logits are peaked like these."""
    loaded = load_target_model(str(tiny_gemma2_dir), device="cpu", dtype="float32")
    loaded.model.get_output_embeddings().weight.data *= 10
    return loaded


def _token_directions(target, tokens):
    """Directions that the logit lens reads as `tokens`: their unembedding rows."""
    unembed = target.model.get_output_embeddings().weight.detach()
    return unembed[tokens]


def _manual_score(target, direction, scale, k=20):
    """The paper's formula, one direction at a time, without our batching or hook helper."""
    lens = logit_lens_tokens(target, direction[None], k)[0]
    ids = prompt_ids(target)

    def hook(_module, _args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        hidden[:, -1] += scale * direction
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = target.residual_module(LAYER).register_forward_hook(hook)
    try:
        with torch.no_grad():
            probs = target.model(input_ids=ids).logits[0, -1].float().softmax(-1)
    finally:
        handle.remove()
    order = probs.argsort(descending=True)
    ranks = [int((order == t).nonzero()) for t in lens.tolist()]
    return float(probs[lens].max()) * (1 - min(ranks) / probs.shape[0])


def test_token_direction_scores_high_and_random_or_zero_direction_about_zero(target):
    tokens = [37, 101, 250]
    token_dirs = _token_directions(target, tokens)
    random_dirs = torch.randn(3, target.hidden_size, generator=torch.Generator().manual_seed(0))
    random_dirs *= token_dirs.norm(dim=1, keepdim=True) / random_dirs.norm(dim=1, keepdim=True)
    directions = torch.cat([token_dirs, random_dirs, torch.zeros(1, target.hidden_size)])
    scores = output_scores(target, LAYER, directions, 400.0)
    assert (scores[:3] > 0.9).all(), scores
    assert (scores[3:6] < 0.15).all() and scores[6] == 0, scores  # a random direction barely moves its tokens
    # The token direction's own token becomes the next token.
    assert logit_lens_tokens(target, token_dirs, 1)[:, 0].tolist() == tokens


def test_batched_equals_one_at_a_time_and_the_papers_formula(target):
    generator = torch.Generator().manual_seed(1)
    directions = torch.cat([_token_directions(target, [5, 77]), torch.randn(5, target.hidden_size, generator=generator)])
    scales = torch.tensor([3.0, 50.0, 1.0, 20.0, 200.0, 5.0, 400.0])
    batched = output_scores(target, LAYER, directions, scales, OutputScoreSettings(batch_size=4))
    single = torch.cat([output_scores(target, LAYER, directions[i:i + 1], scales[i:i + 1],
                                      OutputScoreSettings(batch_size=1)) for i in range(len(directions))])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    manual = torch.tensor([_manual_score(target, d, s) for d, s in zip(directions, scales)])
    torch.testing.assert_close(batched, manual, atol=1e-5, rtol=1e-4)


def _dictionary(target, calibration=None):
    tokens = [37, 101]
    weight = torch.cat([_token_directions(target, tokens), torch.randn(1, target.hidden_size) * 0.02])
    concepts = [Concept(i, f"concept {i}") for i in range(3)]
    return SteeringDictionary(weight=weight, concepts=concepts, layer=LAYER, hook_module="model.layers.1",
                              base_model=target.model_id, method="diffmean", calibration=calibration)


def test_dictionary_round_trip_with_output_scores_and_old_dictionaries_load(target, tmp_path):
    plain = _dictionary(target, calibration=torch.tensor([40.0, 40.0, 40.0]))
    plain.save_pretrained(tmp_path / "old")
    loaded_old = SteeringDictionary.from_pretrained(tmp_path / "old")
    assert loaded_old.output_score is None and loaded_old.output_score_info == {}
    scored = dictionary_output_scores(target, plain)
    assert scored.output_score.shape == (3,) and scored.output_score_info["amplification"] == 10.0
    assert scored.output_score[:2].min() > scored.output_score[2]
    scored.save_pretrained(tmp_path / "new")
    loaded = SteeringDictionary.from_pretrained(tmp_path / "new")
    torch.testing.assert_close(loaded.output_score, scored.output_score)
    assert loaded.output_score_info == scored.output_score_info
    with pytest.raises(DictionaryError, match="no calibration.*axbench infer latent"):
        dictionary_output_scores(target, _dictionary(target))


def test_cli_scores_a_dictionary_in_place(target, tiny_gemma2_dir, tmp_path):
    from axeval.cli import app

    _dictionary(target, calibration=torch.tensor([40.0, 40.0, 40.0])).save_pretrained(tmp_path / "dict")
    runner = CliRunner()
    result = runner.invoke(app, ["dictionary", "output-score", str(tmp_path / "dict"), "--model", str(tiny_gemma2_dir),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "concept 0" in result.output and "output score" in result.output
    assert SteeringDictionary.from_pretrained(tmp_path / "dict").output_score is not None
    _dictionary(target).save_pretrained(tmp_path / "uncalibrated")
    result = runner.invoke(app, ["dictionary", "output-score", str(tmp_path / "uncalibrated"), "--model",
                                 str(tiny_gemma2_dir), "--device", "cpu"])
    assert result.exit_code == 2 and "axbench infer latent" in result.output and "Traceback" not in result.output
