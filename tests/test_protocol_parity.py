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
    assert method_settings("reference", "probe", {"gradient_accumulation_steps": 4}) == \
        {"gradient_accumulation_steps": 4}  # an explicit setting wins
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
