"""The evaluate modules: loaded by path offline, and by id from a Space repo on the local Hub stand-in."""

from __future__ import annotations

import math
from pathlib import Path

# Imported at module level so that the hub_env fixture patches evaluate's endpoint too.
import evaluate
import pytest
from huggingface_hub import HfApi

import axeval.metrics.hub as metric_hub
from axeval.judge_templates import JUDGE_TEMPLATE_HASH, TEMPLATE_HASHES
from axeval.metrics.hub import METRICS_DIR, push_metrics

# evaluate imports downloaded modules as the package `evaluate_modules`, which lives in the modules cache it
# first used; hub_env moves the cache into a fresh home, where that already-imported package cannot see.
MODULES_CACHE = evaluate.config.HF_MODULES_CACHE

STEERING_INPUTS = {
    "concept_ids": [0, 0, 0, 0, 1, 1],
    "prompt_ids": [0, 0, 1, 1, 0, 1],
    "halves": ["selection", "selection", "heldout", "heldout", "selection", "heldout"],
    "factors": [1.0, 2.0, 1.0, 2.0, 1.0, 1.0],
    "concept_ratings": [1, 2, 2, 2, 2, None],
    "instruction_ratings": [2, 2, 2, 2, 2, 2],
    "fluency_ratings": [2, 2, 1, 2, 2, 2],
}


def test_concept_detection_loads_by_path_and_matches_the_plain_function():
    detection = evaluate.load(str(METRICS_DIR / "concept_detection"))
    results = detection.compute(
        scores=[0.9, 0.7, 0.2, 0.1, 0.8, 0.6, 0.5, 0.65, 0.3, 0.95, 0.0, 0.0],
        categories=["positive", "positive", "negative", "negative", "positive", "positive", "negative", "negative",
                    "hard negative", "negative", "negative", "negative"],
        concept_ids=[0, 0, 0, 0, 1, 1, 1, 1, 1, -1, -1, -1],
        imbalance=True, n_resamples=200, seed=1)
    assert results["per_concept_auroc"] == {0: 1.0, 1: 0.75}
    assert results["auroc"] == pytest.approx(0.875)
    assert results["auroc_ci_low"] <= results["auroc"] <= results["auroc_ci_high"]
    assert (results["n_concepts"], results["n_hard_negatives"]) == (2, 1)
    # As AxBench: each concept's own rows plus the shared pool 0.95, 0, 0.
    # Concept 0: positives 0.9, 0.7, negatives 0.2, 0.1 → best F1 at 0.7: P 2/3, R 1 → 0.8.
    # Concept 1: positives 0.8, 0.6, negatives 0.5, 0.65, hard negative 0.3 → best at 0.6: P 2/4, R 1 → 2/3.
    assert results["imbalance_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_steering_loads_by_path_and_counts_parse_failures():
    steering = evaluate.load(str(METRICS_DIR / "steering"))
    results = steering.compute(**STEERING_INPUTS, n_resamples=100)
    # Concept 0: factor 2.0 wins on selection (2 vs 1.5); held-out at 2.0 → 2.0. Concept 1: its held-out row
    # failed to parse → undefined, counted, and not averaged in as 0.
    assert results["chosen_factors"][0] == 2.0
    assert results["score"] == 2.0
    assert (results["n_parse_failures"], results["n_undefined"], results["n_concepts"]) == (1, 1, 2)


def test_suppression_mode_through_the_module():
    steering = evaluate.load(str(METRICS_DIR / "steering"))
    results = steering.compute(concept_ids=[0, 0], prompt_ids=[0, 1], halves=["selection", "heldout"],
                               factors=[-1.0, -1.0], concept_ratings=[0, 0], instruction_ratings=[2, 2],
                               fluency_ratings=[2, 2], suppression=True)
    assert results["score"] == 2.0


def test_metric_card_names_the_current_judge_templates():
    card = (METRICS_DIR / "steering" / "README.md").read_text(encoding="utf-8")
    assert JUDGE_TEMPLATE_HASH in card, "judge templates changed: update the template hash in the steering card"
    assert all(value in card for value in TEMPLATE_HASHES.values())
    for section in ("## Metric Description", "### Inputs", "### Output Values", "#### Values from Popular Papers",
                    "## Limitations and Bias", "## Citation"):
        assert section in card
        assert section in (METRICS_DIR / "concept_detection" / "README.md").read_text(encoding="utf-8")


def test_push_metrics_then_load_by_id_from_the_hub(hub_env, monkeypatch):
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", MODULES_CACHE)
    org = hub_env.user
    pushed = push_metrics(org, token=hub_env.token)
    assert [p.repo_id for p in pushed] == [f"{org}/concept_detection", f"{org}/steering"]
    files = set(HfApi(endpoint=hub_env.endpoint, token=hub_env.token).list_repo_files(f"{org}/steering",
                                                                                      repo_type="space"))
    assert {"steering.py", "README.md", "requirements.txt", "app.py"} <= files
    steering = evaluate.load(f"{org}/steering")
    assert steering.compute(**STEERING_INPUTS)["score"] == 2.0
    detection = evaluate.load(f"{org}/concept_detection")
    assert detection.compute(scores=[1.0, 0.0], categories=["positive", "negative"], concept_ids=[0, 0])["auroc"] == 1.0
    # Pushing again updates the Spaces in place.
    assert len(push_metrics(org, token=hub_env.token, names=("steering",))) == 1


def test_push_metrics_rejects_a_repo_id_as_org():
    with pytest.raises(ValueError, match="without '/'"):
        push_metrics("org/steering")


def test_space_files_pin_the_package(tmp_path: Path):
    files = metric_hub.metric_files("steering", "org/steering", requirement="axbench==0.1.0")
    assert b"axbench==0.1.0" in files["requirements.txt"]
    assert b'evaluate.load("org/steering")' in files["app.py"]
    assert not math.isnan(len(files["steering.py"]))
