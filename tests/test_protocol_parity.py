"""Protocol parity with AxBench's reference code (docs/protocol.md).

The `reference_*` functions below re-state, in this test, the logic of AxBench's evaluators
(`evaluators/aucroc.py`, `hard_negative.py`, `latent_stats.py` at stanfordnlp/axbench@e9b8cd4) and of
scikit-learn's PCA sign convention; our code must give their numbers on random inputs with ties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA as SklearnPCA
from sklearn.metrics import auc, precision_recall_curve, precision_recall_fscore_support, roc_curve

from axeval.detection import concept_detection, imbalance_detection

LABELS = {"positive": 1, "negative": 0, "hard negative": 0}


def _normalised(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    scores = frame["score"]
    frame["normalized_max"] = ((scores - scores.min()) / (scores.max() - scores.min())).fillna(0)
    frame["label"] = frame["category"].map(LABELS)
    return frame


def reference_auroc(frame: pd.DataFrame) -> float:
    """AUCROCEvaluator: its label map has no "hard negative", so those rows drop out."""
    data = _normalised(frame)
    data["label"] = data["category"].map({"positive": 1, "negative": 0})
    kept = data.dropna(subset=["label"])
    fpr, tpr, _ = roc_curve(kept["label"], kept["normalized_max"])
    return float(auc(fpr, tpr))


def reference_hard_negative(frame: pd.DataFrame) -> dict[str, float]:
    """HardNegativeEvaluator: Youden threshold on positives vs negatives, accuracies, macro average."""
    data = _normalised(frame)
    train = data[data["category"].isin(["positive", "negative"])]
    fpr, tpr, thresholds = roc_curve(train["label"], train["normalized_max"])
    threshold = thresholds[np.argmax(tpr - fpr)]
    if np.isinf(float(threshold)):
        return {}
    accuracies = {}
    for category in ("positive", "hard negative"):
        rows = data[data["category"] == category]
        if not len(rows):
            return {}
        accuracies[category] = float(((rows["normalized_max"] >= threshold).astype(int) == rows["label"]).mean())
    return {"positive_accuracy": accuracies["positive"], "hard_negative_accuracy": accuracies["hard negative"],
            "macro_accuracy": float(np.mean(list(accuracies.values())))}


def reference_latent_stats(frame: pd.DataFrame) -> dict[str, float]:
    """LatentStatsEvaluator: F1-maximal PR threshold on positives vs negatives, P/R/F1 over all rows."""
    data = _normalised(frame)
    train = data[data["category"].isin(["positive", "negative"])]
    precision, recall, thresholds = precision_recall_curve(train["label"], train["normalized_max"])
    f1 = np.zeros_like(precision)
    mask = precision + recall > 0
    f1[mask] = 2 * precision[mask] * recall[mask] / (precision[mask] + recall[mask])
    threshold = thresholds[np.argmax(f1)]
    predictions = (data["normalized_max"] >= threshold).astype(int)
    p, r, f, _ = precision_recall_fscore_support(data["label"], predictions, average="binary", zero_division=0.0)
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def _random_concept(rng: np.random.Generator, concept_id: int, decimals: int) -> pd.DataFrame:
    n_pos, n_neg, n_hard = rng.integers(2, 12), rng.integers(2, 12), rng.integers(0, 5)
    scores = np.r_[rng.normal(1.0, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg), rng.normal(0.6, 1.0, n_hard)]
    return pd.DataFrame({"method": "M", "concept_id": concept_id,
                         "category": ["positive"] * n_pos + ["negative"] * n_neg + ["hard negative"] * n_hard,
                         "score": np.round(scores, decimals)})  # rounding makes ties within and across classes


@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_concept_detection_equals_the_reference_evaluators(decimals):
    rng = np.random.default_rng(decimals)
    frames = [_random_concept(rng, concept_id, decimals) for concept_id in range(60)]
    table = concept_detection(pd.concat(frames, ignore_index=True)).set_index("concept_id")
    for concept_id, frame in enumerate(frames):
        ours = table.loc[concept_id]
        assert ours["auroc"] == pytest.approx(reference_auroc(frame), abs=1e-9)
        stats = reference_latent_stats(frame)
        for key in ("precision", "recall", "f1"):
            assert ours[key] == pytest.approx(stats[key], abs=1e-9), (concept_id, key)
        hard = reference_hard_negative(frame)
        if hard:
            for key, value in hard.items():
                assert ours[key] == pytest.approx(value, abs=1e-9), (concept_id, key)
        else:  # the reference reports nothing: no hard negatives, or no finite threshold
            assert np.isnan(ours["macro_accuracy"])


def test_imbalance_f1_equals_the_reference_on_own_rows_plus_the_shared_pool():
    rng = np.random.default_rng(11)
    frames = [_random_concept(rng, concept_id, 2) for concept_id in range(20)]
    pool_scores = np.round(rng.normal(0.0, 1.0, (20, 300)), 2)
    shared = pd.DataFrame({"method": "M", "concept_id": -1, "category": "negative",
                           "score": pool_scores.ravel(), "scored_concept_id": np.repeat(np.arange(20), 300)})
    table = imbalance_detection(pd.concat([*frames, shared], ignore_index=True)).set_index("concept_id")
    for concept_id, frame in enumerate(frames):
        pool = pd.DataFrame({"method": "M", "concept_id": -1, "category": "negative",
                             "score": pool_scores[concept_id]})
        expected = reference_latent_stats(pd.concat([frame, pool], ignore_index=True))
        for key in ("precision", "recall", "f1"):
            assert table.loc[concept_id, key] == pytest.approx(expected[key], abs=1e-9), (concept_id, key)


def test_first_component_sign_follows_sklearn():
    """PCA and LAT directions (both `first_component`) equal sklearn's `PCA(...).components_[0]`, sign included:
    sklearn fixes it with `svd_flip` (largest-magnitude entry positive); a raw eigenvector's sign is arbitrary."""
    from axmethods.methods.pca import first_component

    rng = np.random.default_rng(3)
    for _ in range(40):
        n, d = int(rng.integers(12, 40)), int(rng.integers(3, 9))
        x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, d)
        expected = SklearnPCA(n_components=2).fit(x).components_[0]
        ours = first_component(torch.tensor(x)[None], torch.ones(1, n, dtype=torch.bool))[0].numpy()
        assert ours == pytest.approx(expected, abs=1e-6)


def test_reft_r1_l1_divides_by_every_intervened_position():
    """AxBench's `calculate_l1_losses`: the non-top-k latents' sum over the count of all intervened positions."""
    from axmethods.methods.reft_r1 import topk_relu_intervention

    hidden = torch.tensor([[[3.0], [1.0], [2.0], [0.5], [9.0]]])  # one row, five positions, d = 1
    mask = torch.tensor([[True, True, True, True, False]])  # the last position is padding
    _, l1 = topk_relu_intervention(hidden, torch.tensor([[1.0]]), mask, topk=2)
    # top-2 of the four valid latents: 3 and 2; the rest 1 + 0.5 over 4 positions (padding never counts).
    assert l1.tolist() == pytest.approx([1.5 / 4])


def test_gradient_is_clipped_before_its_parallel_part_is_removed():
    """AxBench clips the gradient, then removes the part along w: the kept part can end below max_norm."""
    from axmethods.trainers.concept_trainer import prepare_gradient_

    weight = torch.nn.Parameter(torch.tensor([[1.0, 0.0]]))
    weight.grad = torch.tensor([[3.0, 4.0]])
    prepare_gradient_(weight, max_norm=1.0, unit_norm=True)
    assert weight.grad.tolist()[0] == pytest.approx([0.0, 0.8], abs=1e-5)  # the other order gives [0, 1]


def test_prompt_steering_is_judged_against_the_original_instruction(tiny_llama_target):
    """AxBench's judge rates instruction relevance against `original_prompt`, never the steering-augmented prompt."""
    from types import SimpleNamespace

    from axeval.judge import Judge
    from axmethods.inference.steering import PromptSteerer, plan_rows

    steerer = PromptSteerer(SimpleNamespace(method="prompt-steering", config_hash="h", template_hash="h",
                                            prompts={0: "Mention the sea in every sentence."}))
    split = pd.DataFrame({"concept_id": [0], "input_concept": ["the sea"], "input_id": [0], "half": ["heldout"],
                          "original_prompt": ["Describe your morning."]})
    row = plan_rows(split, steerer, tiny_llama_target, [], seed=0).iloc[0]
    assert row["instruction"] == "Describe your morning."
    assert row["model_instruction"].startswith("Mention the sea") and "Mention the sea" in row["prompt"]
    request = Judge(backend=None)._request("instruction", {**row.to_dict(), "generation": "Waves."}, attempt=0)
    content = request.messages[-1]["content"]
    assert "Describe your morning." in content and "Mention the sea" not in content


def test_reference_protocol_scores_parse_failures_zero_and_restores_reference_settings():
    from axeval.config import AxbenchConfig, ConfigError
    from axeval.protocol import calibration_fallback, method_settings
    from axeval.steering import score_generations

    judged = pd.DataFrame({"method": "M", "concept_id": 0, "prompt_id": [0, 1], "half": "heldout", "factor": 1.0,
                           "concept_rating": [2.0, np.nan], "instruction_rating": [2.0, 2.0],
                           "fluency_rating": [1.0, 2.0], "parse_status": ["ok", "parse_failure"]})
    fixed = score_generations(judged)
    assert fixed["excluded"].tolist() == [False, True]
    reference = score_generations(judged, parse_failures_as_zero=True)
    assert reference["score"].tolist() == [pytest.approx(1.5), 0.0] and not reference["excluded"].any()

    assert method_settings("reference", "probe", {}) == {"gradient_accumulation_steps": 1}
    assert method_settings("reference", "probe", {"gradient_accumulation_steps": 1, "learning_rate": 0.1}) == \
        {"gradient_accumulation_steps": 1, "learning_rate": 0.1}
    with pytest.raises(ValueError, match="contradicts run.protocol=reference"):  # the switch governs it
        method_settings("reference", "probe", {"gradient_accumulation_steps": 4})
    assert method_settings("fixed", "probe", {"gradient_accumulation_steps": 4}) == {"gradient_accumulation_steps": 4}
    assert method_settings("fixed", "probe", {}) == {}
    assert (calibration_fallback("reference"), calibration_fallback("fixed")) == (50.0, None)
    assert AxbenchConfig.load(None, ["run.protocol=reference"]).run.protocol == "reference"
    with pytest.raises(ConfigError, match="run.protocol='paper' is unknown"):
        AxbenchConfig.load(None, ["run.protocol=paper"])


def test_config_show_prints_the_resolved_protocol(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from axeval.cli import app

    result = CliRunner().invoke(app, ["config", "show", "--set", "run.protocol=reference"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["inference"]["factors"] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0]
    assert shown["inference"]["top_k"] == 50 and shown["judge"]["temperature"] == 0.7
    assert shown["run"]["protocol"] == "reference"
    paper = Path(__file__).resolve().parents[1] / "configs" / "paper" / "2b-l20.yaml"
    shown = yaml.safe_load(CliRunner().invoke(app, ["config", "show", str(paper), "--set",
                                                    "run.protocol=reference"]).output)
    assert (shown["run"]["protocol"], shown["run"]["layer"], shown["inference"]["top_k"]) == ("reference", 20, 50)
    bad = CliRunner().invoke(app, ["config", "show", "--set", "inference.top_k=many"])
    assert bad.exit_code == 2 and "inference.top_k" in bad.output


def reference_steering(frame: pd.DataFrame) -> tuple[float, dict[int, float]]:
    """AxBench's steering score: harmonic mean per generation (0 if any rating is 0 or unparsed), per concept the
    factor with the best mean on the selection half (first on ties, factors ascending), the held-out mean there."""
    ratings = frame[["concept_rating", "instruction_rating", "fluency_rating"]].fillna(0.0).to_numpy()
    with np.errstate(divide="ignore"):
        harmonic = np.where((ratings == 0).any(axis=1), 0.0, 3.0 / np.sum(1.0 / ratings, axis=1))
    frame = frame.assign(rating=harmonic)
    scores, chosen = [], {}
    for concept_id, group in frame.groupby("concept_id"):
        selection = group[group["half"] == "selection"].groupby("factor")["rating"].mean().sort_index()
        best = selection.index[int(np.argmax(selection.to_numpy()))]
        heldout = group[(group["half"] == "heldout") & (group["factor"] == best)]
        scores.append(heldout["rating"].mean())
        chosen[int(concept_id)] = float(best)
    return float(np.mean(scores)), chosen


def test_steering_module_equals_the_reference_evaluation_under_the_reference_protocol():
    from axeval.metrics.steering.steering import Steering

    rng = np.random.default_rng(5)
    factors = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0]
    rows = [{"concept_id": c, "prompt_id": p, "half": "selection" if p < 5 else "heldout", "factor": f}
            for c in range(12) for p in range(10) for f in factors]
    frame = pd.DataFrame(rows)
    for column in ("concept_rating", "instruction_rating", "fluency_rating"):
        values = rng.integers(0, 3, len(frame)).astype(float)
        values[rng.random(len(frame)) < 0.03] = np.nan  # parse failures
        frame[column] = values
    expected_score, expected_factors = reference_steering(frame)
    results = Steering().compute(
        concept_ids=frame["concept_id"].tolist(), prompt_ids=frame["prompt_id"].tolist(),
        halves=frame["half"].tolist(), factors=frame["factor"].tolist(),
        concept_ratings=frame["concept_rating"].tolist(), instruction_ratings=frame["instruction_rating"].tolist(),
        fluency_ratings=frame["fluency_rating"].tolist(), protocol="reference", n_resamples=10)
    assert results["score"] == pytest.approx(expected_score, abs=1e-9)
    assert results["chosen_factors"] == expected_factors


# ----- `protocol: reference`, one test per restored row of docs/protocol.md ---------------------------------------


@pytest.mark.parametrize("answer", ['{"reason": "x", "rating": 7}', "Rating: [[2]]"])  # schema failure, no JSON
def test_reference_judge_asks_once_and_scores_the_failure_zero(fault_server, answer):
    """AxBench's judge parsed one answer per rating; ours re-asks (judge and LLM client) unless run.protocol says
    reference. Counted on the wire: one request per rating, and the generation scores 0."""
    from fixtures_llm import ok

    from axdata.llm import LLMConfig, OpenAIChatClient
    from axeval.judge import Judge, JudgeConfig
    from axeval.steering import score_generations

    fault_server.default = ok(answer)
    generations = pd.DataFrame({"method": "M", "concept_id": [0], "concept": "cats", "prompt_id": 0,
                                "half": "heldout", "factor": 1.0, "instruction": "Describe your morning.",
                                "generation": ["A cat."]})
    settings = LLMConfig(endpoint=fault_server.base_url, model="fault-model", max_retries=0, max_invalid_retries=2,
                         timeout_s=5.0)

    def judged(protocol: str) -> tuple[pd.DataFrame, int]:
        before = len(fault_server.requests)
        client = OpenAIChatClient(settings, fault_server.base_url)
        try:  # temperature 0.7 and parse_retries 1 (the defaults): re-asks are possible
            table = Judge(client, JudgeConfig(), protocol=protocol).judge(generations)
        finally:
            client.close()
        return table, len(fault_server.requests) - before

    table, requests = judged("reference")
    assert requests == 3 and (table[["concept_attempts", "instruction_attempts", "fluency_attempts"]] == 1).all(axis=None)
    assert table.loc[0, "parse_status"] == "parse_failure" and int(table["judge_calls"].sum()) == 3
    assert score_generations(table, parse_failures_as_zero=True)["score"].tolist() == [0.0]
    _, fixed_requests = judged("fixed")
    assert fixed_requests > 3  # the default protocol re-asks


def test_reference_judge_requests_are_cached_apart_from_re_asked_ones():
    from axdata.llm import ChatRequest

    default = ChatRequest.user("rate this", purpose="judge-concept")
    one_ask = ChatRequest.user("rate this", purpose="judge-concept", max_invalid_retries=0)
    # An answer that took a re-ask must not answer a single ask; the default key is the one cached before.
    assert default.cache_key("m") != one_ask.cache_key("m")
    assert default.cache_key("m") == ChatRequest.user("rate this", purpose="judge-concept").cache_key("m")


def test_round_scores_equals_pythons_round_to_3_decimals():
    from axmethods.inference.latent import round_scores

    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(0, 3, 20000), rng.normal(0, 300, 2000), np.arange(-400, 400) / 2000 + 0.0005,
                   [0.0625, 0.1875, -0.0625, 2.5e-4, 1.0005, 0.0]].astype(np.float32)
    expected = np.array([round(float(x), 3) for x in values], dtype=np.float32)  # AxBench: round(x, 3) per token
    assert np.array_equal(round_scores(torch.from_numpy(values), 3).numpy(), expected)


def test_reference_latent_scores_are_the_max_of_3_decimal_rounded_token_activations(tiny_llama_target):
    """AxBench rounds every token activation to 3 decimals, then takes the max and the first index of it."""
    from test_inference import latent_frame, make_dictionary

    from axmethods.hooks import layer_outputs
    from axmethods.inference.latent import latent_inference, score_texts
    from axmethods.models import pad_batch, pad_token_id

    target = tiny_llama_target
    dictionary = make_dictionary(target, n=3)
    # Scaled down so that many token activations share their 3-decimal value: the argmax rule then matters.
    dictionary.weight = dictionary.weight * 1e-3
    latent = latent_frame()
    texts = [target.format_transcript(i, o) for i, o in zip(latent["input"], latent["output"])]
    (scores,) = score_texts(target, [dictionary], texts, batch_size=4, progress=False, score_decimals=3)
    ties = 0
    for index, text in enumerate(texts):
        ids, mask = pad_batch([target.encode(text)], pad_token_id(target), side="right")
        with torch.inference_mode():
            hidden = layer_outputs(target, {dictionary.layer}, ids, mask)[dictionary.layer][0]
        per_token = (hidden @ dictionary.weight.to(hidden.dtype).T).float()[target.prefix_length:]
        for concept in range(dictionary.n_concepts):
            acts = [round(x, 3) for x in per_token[:, concept].tolist()]
            assert scores.max_act[index, concept].item() == pytest.approx(max(acts), abs=1e-7)
            assert scores.max_index[index, concept].item() == acts.index(max(acts)) + target.prefix_length
            ties += acts.count(max(acts)) > 1
    assert ties  # the first-of-equal-maxima rule was exercised
    rounded = latent_inference(target, [dictionary], latent, progress=False, score_decimals=3)["score"].to_numpy()
    plain = latent_inference(target, [dictionary], latent, progress=False)["score"].to_numpy()
    assert not np.array_equal(rounded, plain)  # the default protocol does not round
    assert np.allclose(rounded, np.round(plain.astype(np.float64), 3), atol=1e-7)


def test_reference_latent_stage_rounds_and_calibrates_from_rounded_scores(tiny_llama_target, tmp_path):
    from test_inference import latent_frame, make_dictionary

    from axeval.stages.methods import score_latent
    from axmethods.dictionary import SteeringDictionary

    class Data:  # what score_latent reads of a run dataset: the latent split and its folder (provenance)
        directory = tmp_path / "data"

        def split(self, name):
            assert name == "latent"
            return latent_frame()

    target = tiny_llama_target
    dictionary = make_dictionary(target, n=3)
    out = tmp_path / "latent.parquet"
    summary = score_latent(target, [dictionary], Data(), out, score_decimals=3, calibration_fallback=50.0,
                           calibrate_into=[tmp_path / "dictionary"])
    scores = pd.read_parquet(out)["score"].to_numpy(dtype=np.float64)
    assert summary["rows"] == len(scores) and np.allclose(scores, np.round(scores, 3), atol=1e-6)
    calibrated = SteeringDictionary.from_pretrained(tmp_path / "dictionary", layer=dictionary.layer)
    maxima = pd.read_parquet(out).groupby("concept_id")["score"].max()
    expected = np.where(maxima > 0, maxima, 50.0)  # AxBench's max_act (or 50) from the rounded scores
    assert np.allclose(calibrated.calibration.numpy(), expected, atol=1e-6)


def test_reference_protocol_refuses_explicit_settings_it_governs(tmp_path):
    """The switch governs the probe's accumulation and the judge's re-asks: a config that sets them otherwise is
    refused at load with one message, before anything runs; the values the switch uses are accepted."""
    from typer.testing import CliRunner

    from axeval.cli import app
    from axeval.config import AxbenchConfig, ConfigError

    reference = ["run.protocol=reference", "methods.train=[diffmean, probe, prompt-steering]"]
    with pytest.raises(ConfigError) as refused:
        AxbenchConfig.load(None, [*reference, "methods.settings={probe: {gradient_accumulation_steps: 4}}"])
    message = str(refused.value)
    assert "methods.settings.probe.gradient_accumulation_steps=4 contradicts run.protocol=reference" in message
    assert "remove the setting" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"judge.parse_retries=2 contradicts run.protocol=reference"):
        AxbenchConfig.load(None, [*reference, "judge.parse_retries=2"])
    accepted = AxbenchConfig.load(None, [*reference, "methods.settings={LinearProbe: {gradient_accumulation_steps: 1}}",
                                         "judge.parse_retries=0"])
    assert accepted.run.protocol == "reference"
    fixed = AxbenchConfig.load(None, ["methods.settings={probe: {gradient_accumulation_steps: 4}}",
                                      "judge.parse_retries=2"])
    assert fixed.methods.settings["probe"]["gradient_accumulation_steps"] == 4

    steering = tmp_path / "steering.parquet"
    pd.DataFrame({"concept_id": [0], "concept": "c", "instruction": "i", "generation": "g"}).to_parquet(steering)
    result = CliRunner().invoke(app, ["eval", "judge", str(steering), "--out", str(tmp_path / "j.parquet"),
                                      "--set", "run.protocol=reference", "--parse-retries", "2"])
    assert result.exit_code == 1 and "parse_retries=2 contradicts run.protocol=reference" in result.output
    assert "Traceback" not in result.output
