"""Latent scoring (one pass, early stop, padding / prefix, calibration) and steered generation
(heterogeneous batches, per-row seeds, resume, provenance), plus the `infer` CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from axdata.concepts import Concept
from axdata.settings import SettingsError
from axeval.cli.infer import infer_app
from axeval.detection import imbalance_detection
from axmethods.dictionary import DictionaryError, SteeringDictionary
from axmethods.hooks import layer_outputs
from axmethods.inference import sampling as sampling_module
from axmethods.inference.latent import calibrate, latent_inference, score_texts
from axmethods.inference.sampling import SamplingConfig, draw, sample
from axmethods.inference.steering import DictionarySteerer, UnsteeredBaseline, read_provenance, run_steering
from axmethods.models import pad_batch

WORDS = ["The quick brown fox", "Write a short poem about the sea", "What is the capital of France?",
         "def add(a, b): return a + b", "Golden Gate Bridge", "Numbers 0 1 2 3", "photosynthesis in plants",
         "apple zebra hello world"]


def make_dictionary(target, n: int = 3, layer: int = 0, seed: int = 0, **kwargs) -> SteeringDictionary:
    generator = torch.Generator().manual_seed(seed)
    return SteeringDictionary(torch.randn(n, target.hidden_size, generator=generator),
                              [Concept(i, f"concept {i}") for i in range(n)], layer,
                              target.residual_module_path(layer), target.model_id, kwargs.pop("method", "DiffMean"),
                              **kwargs)


def latent_frame(n_concepts: int = 3, per_concept: int = 4) -> pd.DataFrame:
    rows = []
    for concept in range(n_concepts):
        for k in range(per_concept):
            rows.append({"input": WORDS[(concept + k) % len(WORDS)], "output": WORDS[(concept * 3 + k) % len(WORDS)] * (k + 1),
                         "output_concept": f"concept {concept}", "concept_genre": "text",
                         "category": ["positive", "negative", "hard negative", "positive"][k],
                         "dataset_category": "instruction", "concept_id": concept})
    return pd.DataFrame(rows)


def steering_frame(n_concepts: int = 3, prompts: int = 2) -> pd.DataFrame:
    return pd.DataFrame([{"dataset_name": "AlpacaEval", "concept_id": c, "input_concept": f"concept {c}", "input_id": p,
                          "original_prompt": WORDS[(c + p) % len(WORDS)], "half": ["selection", "heldout"][p % 2]}
                         for c in range(n_concepts) for p in range(prompts)])


# ----- latent --------------------------------------------------------------------------------------

def test_early_stop_equals_full_forward_and_skips_later_layers(tiny_target) -> None:
    target = tiny_target
    input_ids, attention_mask = pad_batch([target.encode(target.format_transcript(w, w * 2)) for w in WORDS[:3]],
                                          target.tokenizer.pad_token_id)
    calls = []
    handle = target.residual_module(1).register_forward_hook(lambda *args: calls.append(1))
    stopped = layer_outputs(target, [0], input_ids, attention_mask)[0]
    assert not calls  # block 1 never ran
    handle.remove()
    with torch.inference_mode():
        full = target.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    assert torch.equal(stopped, full.hidden_states[1])


def test_one_pass_equals_per_concept_loop_and_padding_does_not_matter(tiny_target) -> None:
    target = tiny_target
    dictionaries = [make_dictionary(target, n=5, layer=0, bias=torch.linspace(-1, 1, 5)),
                    make_dictionary(target, n=4, layer=1, seed=1, activation="relu", method="ReFT-r1")]
    texts = [target.format_transcript(w, w * (k + 1)) for k, w in enumerate(WORDS)]
    together = score_texts(target, dictionaries, texts, batch_size=3, progress=False)
    for dictionary, scores in zip(dictionaries, together):
        for row, concept in enumerate(dictionary.concepts):
            single = dictionary.__class__(dictionary.weight[row:row + 1], [concept], dictionary.layer,
                                          dictionary.hook_module, dictionary.base_model, dictionary.method,
                                          bias=None if dictionary.bias is None else dictionary.bias[row:row + 1],
                                          activation=dictionary.activation)
            (alone,) = score_texts(target, [single], texts, batch_size=1, progress=False)
            assert torch.allclose(scores.max_act[:, row], alone.max_act[:, 0], atol=1e-5)
            assert torch.equal(scores.max_index[:, row], alone.max_index[:, 0])


def test_scores_max_pool_after_the_prefix(tiny_llama_target) -> None:
    target = tiny_llama_target
    dictionary = make_dictionary(target, n=2)
    text = target.format_transcript(WORDS[1], WORDS[2])
    (scores,) = score_texts(target, [dictionary], [text, target.format_transcript(WORDS[0], "x")], batch_size=2,
                            progress=False)
    ids = torch.tensor([target.encode(text)])
    with torch.inference_mode():
        hidden = target.model(input_ids=ids, output_hidden_states=True).hidden_states[1][0]
    per_token = hidden @ dictionary.weight.T
    expected, where = per_token[target.prefix_length:].max(dim=0)
    assert torch.allclose(scores.max_act[0], expected, atol=1e-5)
    assert torch.equal(scores.max_index[0], where + target.prefix_length)
    with pytest.raises(ValueError, match="no tokens after"):
        score_texts(target, [dictionary], ["hi"], progress=False)


def test_latent_modes_and_calibration(tiny_llama_target) -> None:
    target = tiny_llama_target
    dictionary = make_dictionary(target, n=3)
    latent = latent_frame()
    scores = latent_inference(target, [dictionary], latent, progress=False)
    assert len(scores) == len(latent)
    assert {"method", "concept_id", "category", "score", "max_token", "max_token_index", "input"} <= set(scores.columns)
    assert (scores["max_token_index"] >= target.prefix_length).all()
    calibrated = calibrate(dictionary, scores)
    expected = scores.groupby("concept_id")["score"].max().clip(lower=0)
    positive = expected[expected > 0]
    expected[expected <= 0] = positive.median()
    assert torch.allclose(calibrated.calibration, torch.tensor(expected.to_numpy(), dtype=torch.float32))

    pool = latent[latent["category"] == "negative"].assign(concept_id=-1, output_concept="EEEEE")
    imbalance = latent_inference(target, [dictionary], latent, mode="latent_imbalance", imbalance_pool=pool,
                                 progress=False)
    positives = (latent["category"] == "positive").sum()
    assert len(imbalance) == dictionary.n_concepts * len(pool) + positives
    # The same text scored for the same concept gives the same score in both modes.
    own = scores[scores["category"] == "positive"].set_index(["row_id", "concept_id"])["score"]
    shared = imbalance[imbalance["category"] == "positive"].set_index(["row_id", "concept_id"])["score"]
    assert np.allclose(own.sort_index(), shared.sort_index(), atol=1e-5)
    # The output is what the imbalance metric reads: every concept against the whole shared pool.
    per_concept = imbalance_detection(imbalance)
    assert sorted(per_concept["concept_id"]) == sorted(dictionary.concept_ids)
    assert (per_concept["n_negative"] == len(pool)).all()


def test_calibration_rule_for_non_positive_maxima(tiny_llama_target) -> None:
    dictionary = make_dictionary(tiny_llama_target, n=3)
    frame = pd.DataFrame({"method": "DiffMean", "concept_id": [0, 0, 1, 2], "score": [1.0, 3.0, -2.0, 5.0],
                          "source_split": "latent"})
    median = calibrate(dictionary, frame)
    assert median.calibration.tolist() == [3.0, 4.0, 5.0]
    assert median.calibration_info["fallback_concepts"] == [1]
    assert calibrate(dictionary, frame, fallback=50.0).calibration.tolist() == [3.0, 50.0, 5.0]
    with pytest.raises(DictionaryError, match="no scale"):
        calibrate(dictionary, frame.assign(score=-1.0))


# ----- steering ------------------------------------------------------------------------------------

def test_draw_is_inverse_cdf_with_top_p() -> None:
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3], [0.2, 0.5, 0.3]]))
    assert draw(logits, torch.tensor([0.1, 0.6]), SamplingConfig()).tolist() == [1, 2]
    assert draw(logits, torch.tensor([0.9, 0.99]), SamplingConfig()).tolist() == [0, 0]
    # top_p 0.6 keeps {0.5, 0.3}: 0.9 × 0.8 = 0.72 falls into the second kept token.
    assert draw(logits, torch.tensor([0.9, 0.1]), SamplingConfig(top_p=0.6)).tolist() == [2, 1]
    assert draw(logits, torch.tensor([0.9, 0.1]), SamplingConfig(temperature=0)).tolist() == [1, 1]


def test_top_k_draw_equals_inverse_cdf_of_hf_top_k_and_never_leaves_the_top_50() -> None:
    """AxBench sampled with HF generate()'s default top-k 50; our seeded draw keeps exactly HF's kept set."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 300, generator=generator) * 3
    logits[0, :60] = 5.0  # ties at the k-th value: HF keeps all of them
    uniforms = torch.rand(400, 4, generator=generator)
    # (Which of several exactly tied tokens top-p drops depends on HF's unstable sort; row 0's ties are for top-k.)
    for config, warpers, rows in ((SamplingConfig(), [TopKLogitsWarper(50)], slice(None)),
                                  (SamplingConfig(top_p=0.8), [TopKLogitsWarper(50), TopPLogitsWarper(0.8)],
                                   slice(1, None))):
        warped = logits[rows].clone()
        for warper in warpers:
            warped = warper(None, warped)
        probs = torch.softmax(warped, dim=-1)
        sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True, stable=True)
        cdf = sorted_probs.cumsum(-1)
        for u in uniforms[:, rows]:
            ours = draw(logits[rows], u, config)
            position = torch.searchsorted(cdf, (u[:, None] * cdf[:, -1:]).contiguous(), right=True).clamp_max(299)
            assert ours.tolist() == sorted_ids.gather(-1, position).squeeze(-1).tolist()
    top50 = logits[1:].topk(50, dim=-1).indices
    drawn = torch.stack([draw(logits, u, SamplingConfig()) for u in uniforms])[:, 1:]
    assert all(bool(torch.isin(drawn[:, row], top50[row]).all()) for row in range(3))
    full = torch.stack([draw(logits, u, SamplingConfig(top_k=0)) for u in uniforms])[:, 1:]
    assert not all(bool(torch.isin(full[:, row], top50[row]).all()) for row in range(3))  # top_k=0: full vocabulary


def test_sampler_with_cache_matches_greedy_generate(tiny_target) -> None:
    target = tiny_target
    prompts = [target.encode(target.format_prompt(w)) for w in WORDS[:3]]
    ours = sample(target, prompts, [0, 1, 2], SamplingConfig(max_new_tokens=6, temperature=0))
    input_ids, attention_mask = pad_batch(prompts, target.tokenizer.pad_token_id, side="left")
    with torch.inference_mode():
        theirs = target.model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6,
                                       do_sample=False, pad_token_id=target.tokenizer.pad_token_id)
    for row, tokens in enumerate(ours):
        assert tokens == theirs[row, input_ids.shape[1]:input_ids.shape[1] + len(tokens)].tolist()


def test_rows_with_their_own_configs_equal_each_row_alone(tiny_target) -> None:
    target = tiny_target
    prompts = [target.encode(target.format_prompt(w)) for w in WORDS[:4]]
    configs = [SamplingConfig(max_new_tokens=3, temperature=0), SamplingConfig(max_new_tokens=7),
               SamplingConfig(max_new_tokens=5, top_k=0, top_p=0.8), SamplingConfig(max_new_tokens=7)]
    together = sample(target, prompts, [1, 2, 3, 4], configs)
    alone = [sample(target, [p], [seed], c)[0] for p, seed, c in zip(prompts, [1, 2, 3, 4], configs)]
    assert together == alone
    assert [len(row) <= c.max_new_tokens for row, c in zip(together, configs)] == [True] * 4
    with pytest.raises(ValueError, match="one per row"):
        sample(target, prompts, [1, 2, 3, 4], configs[:2])


def test_steering_is_reproducible_across_batch_sizes_and_heterogeneous_batches(tiny_target, tmp_path: Path) -> None:
    target = tiny_target
    dictionary = make_dictionary(target, calibration=torch.tensor([1.0, 2.0, 3.0]))
    split = steering_frame()
    config = SamplingConfig(max_new_tokens=12)
    common = {"factors": [0.5, 2.0], "sampling": config, "progress": False}
    big = run_steering(target, DictionarySteerer(dictionary), split, tmp_path / "a.parquet", batch_size=5, **common)
    single = run_steering(target, DictionarySteerer(dictionary), split, tmp_path / "b.parquet", batch_size=1, **common)
    assert len(big) == len(split) * 2
    assert big["generation"].tolist() == single["generation"].tolist()
    assert big["seed"].nunique() == len(big)
    assert np.allclose(big["magnitude"], big["factor"] * big["concept_id"].map({0: 1.0, 1: 2.0, 2: 3.0}))
    other_seed = run_steering(target, DictionarySteerer(dictionary), split, tmp_path / "c.parquet", batch_size=5,
                              seed=7, **common)
    assert other_seed["generation"].tolist() != big["generation"].tolist()
    provenance = read_provenance(tmp_path / "a.parquet")
    assert provenance["method"] == "DiffMean" and provenance["dictionary_config_hash"] == dictionary.config_hash
    assert provenance["sampling_temperature"] == 1.0 and provenance["layer"] == 0
    assert not (tmp_path / "a.parquet.parts").exists()


def test_factor_free_steerers_generate_one_sample_per_prompt(tiny_llama_target, tmp_path: Path) -> None:
    split = steering_frame()
    result = run_steering(tiny_llama_target, UnsteeredBaseline(), split, tmp_path / "u.parquet",
                          sampling=SamplingConfig(max_new_tokens=4), progress=False)
    assert len(result) == len(split) and result["factor"].isna().all()


def test_resume_skips_completed_batches(tiny_llama_target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tiny_llama_target
    dictionary = make_dictionary(target, calibration=torch.ones(3))
    split = steering_frame()
    kwargs = {"factors": [1.0, 2.0], "sampling": SamplingConfig(max_new_tokens=6), "batch_size": 4, "progress": False}
    expected = run_steering(target, DictionarySteerer(dictionary), split, tmp_path / "ref.parquet", **kwargs)

    calls = []
    fail_on_call = [2]
    real_sample = sampling_module.sample

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == fail_on_call[0]:
            raise RuntimeError("interrupted")
        return real_sample(*args, **kw)

    import axmethods.inference.steering as steering_module
    monkeypatch.setattr(steering_module, "sample", flaky)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_steering(target, DictionarySteerer(dictionary), split, tmp_path / "out.parquet", **kwargs)
    assert len(list((tmp_path / "out.parquet.parts").glob("*.parquet"))) == 1
    calls.clear()
    fail_on_call[0] = 0
    resumed = run_steering(target, DictionarySteerer(dictionary), split, tmp_path / "out.parquet", **kwargs)
    assert len(calls) == 2  # 3 batches, 1 already done
    pd.testing.assert_frame_equal(resumed, expected)


def test_uncalibrated_dictionary_cannot_steer(tiny_llama_target, tmp_path: Path) -> None:
    with pytest.raises(DictionaryError, match="no calibration"):
        run_steering(tiny_llama_target, DictionarySteerer(make_dictionary(tiny_llama_target)), steering_frame(),
                     tmp_path / "x.parquet", factors=[1.0], progress=False)


# ----- CLI -----------------------------------------------------------------------------------------

def test_infer_cli_latent_calibrates_then_steers(tiny_llama_target, tiny_llama_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "cfg").mkdir(parents=True)
    latent_frame().to_parquet(data / "cfg" / "latent-00000-of-00001.parquet")
    steering_frame().to_parquet(data / "cfg" / "steering-00000-of-00001.parquet")
    make_dictionary(tiny_llama_target).save_pretrained(tmp_path / "dict")
    runner = CliRunner()
    common = ["--result", str(tmp_path / "dict"), "--data", str(data), "--dataset-config", "cfg",
              "--model", str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32"]
    result = runner.invoke(infer_app, ["latent", *common, "--out", str(tmp_path / "latent.parquet")])
    assert result.exit_code == 0, result.output
    assert SteeringDictionary.load(tmp_path / "dict").calibration is not None
    result = runner.invoke(infer_app, ["steer", *common, "--out", str(tmp_path / "steer.parquet"),
                                       "--factors", "0.5,1", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(tmp_path / "steer.parquet")) == len(steering_frame()) * 2
    result = runner.invoke(infer_app, ["steer", *common, "--out", str(tmp_path / "s.parquet"), "--factors", "a,b"])
    assert isinstance(result.exception, SettingsError) and "factors[0]: expected float, got 'a'" in str(result.exception)
    # A dictionary that never fires cannot be calibrated: one clear message, the other dictionary is calibrated anyway.
    silent = make_dictionary(tiny_llama_target, method="Probe")
    silent.weight.zero_()
    silent.save_pretrained(tmp_path / "silent")
    make_dictionary(tiny_llama_target, seed=1).save_pretrained(tmp_path / "fresh")
    result = runner.invoke(infer_app, ["latent", "--result", str(tmp_path / "silent"), *common[:1],
                                       str(tmp_path / "fresh"), *common[2:], "--out", str(tmp_path / "l2.parquet")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # no traceback
    assert "Not calibrated Probe" in result.output and "--calibration-fallback" in result.output
    assert SteeringDictionary.load(tmp_path / "fresh").calibration is not None
    assert SteeringDictionary.load(tmp_path / "silent").calibration is None
    assert (tmp_path / "l2.parquet").is_file()
    # Steering it is refused before any model loads (this model path does not exist).
    result = runner.invoke(infer_app, ["steer", "--result", str(tmp_path / "silent"), "--data", str(data),
                                       "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "s2.parquet")])
    assert result.exit_code == 1 and "has no calibration" in result.output, result.output


def test_latent_inference_rejects_an_unknown_detector_and_skips_steering_only(tiny_llama_target) -> None:
    from axmethods.methods.prompt import SteeringPrompts

    target = tiny_llama_target

    class Oracle(SteeringDictionary):
        detector = "oracle"

    odd = Oracle(**{f: getattr(make_dictionary(target), f) for f in ("weight", "concepts", "layer", "hook_module",
                                                                      "base_model", "method")})
    with pytest.raises(DictionaryError, match="oracle"):
        latent_inference(target, [odd], latent_frame(), progress=False)
    concepts = make_dictionary(target).concepts
    prompt_only = SteeringPrompts(prompts={c.concept_id: "Talk about it." for c in concepts}, concepts=concepts,
                                  method="prompt-steering", base_model="m", layer=0, template="t", template_hash="h")
    scores = latent_inference(target, [prompt_only, make_dictionary(target)], latent_frame(), progress=False)
    assert set(scores["method"]) == {"DiffMean"} and len(scores) == len(latent_frame())
