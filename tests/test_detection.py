"""Concept detection math: AUROC against scikit-learn, hard negatives at Youden, imbalance F1, bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from axeval.detection import (
    concept_detection,
    imbalance_detection,
    mean_roc_curve,
    summarize_detection,
    summarize_imbalance,
    youden_threshold,
)
from axeval.stats import bootstrap_ci


def _rows(method: str, concept_id: int, positives, negatives, hard=()) -> pd.DataFrame:
    categories = ["positive"] * len(positives) + ["negative"] * len(negatives) + ["hard negative"] * len(hard)
    return pd.DataFrame({"method": method, "concept_id": concept_id, "category": categories,
                         "score": [*positives, *negatives, *hard]})


def test_auroc_equals_sklearn_per_concept_including_ties():
    rng = np.random.default_rng(7)
    frames, expected = [], {}
    for concept_id in range(6):
        # Rounded scores force many ties within and across classes.
        positives = np.round(rng.normal(1.0, 1.0, 36), 1)
        negatives = np.round(rng.normal(0.0, 1.0, 36), 1)
        frames.append(_rows("DiffMean", concept_id, positives, negatives, hard=rng.normal(0.5, 1.0, 4)))
        expected[concept_id] = roc_auc_score(np.r_[np.ones(36), np.zeros(36)], np.r_[positives, negatives])
    table = concept_detection(pd.concat(frames))
    for concept_id, value in expected.items():
        assert table.set_index("concept_id").loc[concept_id, "auroc"] == pytest.approx(value, abs=1e-9)
    summary = summarize_detection(table)
    assert summary.loc[0, "auroc_mean"] == pytest.approx(np.mean(list(expected.values())), abs=1e-9)


def test_all_tied_scores_give_half():
    table = concept_detection(_rows("BoW", 0, [1.0, 1.0], [1.0, 1.0, 1.0]))
    assert table.loc[0, "auroc"] == pytest.approx(0.5, abs=1e-12)


def test_hard_negatives_scored_at_youden_threshold_and_kept_out_of_auroc():
    # Youden J is "2/3" at 0.8 and at 0.4, but in floating point 1 − 1/3 > 2/3: AxBench's exact
    # argmax(tpr − fpr) picks 0.4, and so do we (no tolerance: the reference's tie-breaking, to the bit).
    rows = _rows("M", 0, [0.9, 0.8, 0.4], [0.5, 0.1, 0.2], hard=[0.95, 0.3, 0.79, 0.85])
    table = concept_detection(rows)
    assert table.loc[0, "youden_threshold"] == pytest.approx(0.4)
    assert table.loc[0, "auroc"] == pytest.approx(8 / 9)  # the hard negatives are not in it
    assert table.loc[0, "hard_negative_accuracy"] == pytest.approx(1 / 4)  # only 0.3 falls below 0.4
    assert table.loc[0, "positive_accuracy"] == pytest.approx(1.0)
    assert table.loc[0, "macro_accuracy"] == pytest.approx((1.0 + 1 / 4) / 2)
    assert table.loc[0, "n_hard_negative"] == 4


def test_exact_youden_ties_go_to_the_highest_threshold():
    # J = 0.5 exactly at 0.9 (tpr 1/2, fpr 0) and at 0.3 (tpr 1, fpr 1/2): the first maximum, 0.9.
    assert youden_threshold(np.array([1, 1, 0, 0]), np.array([0.9, 0.3, 0.5, 0.1])) == pytest.approx(0.9)


def test_concepts_without_hard_negatives_are_counted_not_averaged_as_zero():
    rows = pd.concat([_rows("M", 0, [1, 2], [0, -1], hard=[3]), _rows("M", 1, [1, 2], [0, -1])])
    summary = summarize_detection(concept_detection(rows)).iloc[0]
    assert summary["hard_negative_accuracy_mean"] == pytest.approx(0.0)  # concept 0's only hard negative is above
    assert summary["n_hard_negative_concepts"] == 1
    assert summary["n_hard_negatives"] == 1


def test_concept_missing_a_class_is_undefined_and_counted(caplog):
    rows = pd.concat([_rows("M", 0, [1, 2], [0]), _rows("M", 1, [1, 2], [])])
    summary = summarize_detection(concept_detection(rows)).iloc[0]
    assert summary["n_undefined"] == 1 and summary["auroc_n"] == 1 and summary["auroc_mean"] == 1.0
    assert "lack positives or negatives" in caplog.text


def test_youden_threshold_on_separable_scores():
    assert youden_threshold(np.array([1, 1, 0, 0]), np.array([0.9, 0.6, 0.5, 0.1])) == pytest.approx(0.6)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="missing column"):
        concept_detection(pd.DataFrame({"method": ["M"], "concept_id": [0], "category": ["positive"]}))
    with pytest.raises(ValueError, match="unknown category"):
        concept_detection(_rows("M", 0, [1], [0]).replace("negative", "hard negative seen"))


def test_imbalance_f1_with_hand_computed_counts():
    # Concept 0: 2 positives (0.9, 0.6) vs 10 shared negatives, one of which (0.7) outscores a positive.
    shared = pd.DataFrame({"method": "M", "concept_id": -1, "category": "negative",
                           "score": [0.7] + [0.1] * 9})
    rows = pd.concat([_rows("M", 0, [0.9, 0.6], []), shared])
    table = imbalance_detection(rows, thresholds={("M", 0): 0.65})
    row = table.iloc[0]
    assert (row["n_positive"], row["n_negative"], row["threshold_source"]) == (2, 10, "given")
    # threshold 0.65: predicted {0.9, 0.7} → TP 1, FP 1, FN 1
    assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    best = imbalance_detection(rows).iloc[0]  # F1-optimal: threshold 0.9 (P 1, R .5, F1 2/3) or 0.6 (P 2/3, R 1, F1 .8)
    assert best["threshold_source"] == "max_f1" and best["f1"] == pytest.approx(0.8)
    summary = summarize_imbalance(imbalance_detection(rows))
    assert summary.loc[0, "negatives_per_positive"] == pytest.approx(5.0)


def test_imbalance_scores_per_detector_when_scored_concept_column_is_present():
    shared = pd.DataFrame({"method": "M", "concept_id": -1, "category": "negative",
                           "score": [0.95, 0.0], "scored_concept_id": [0, 1]})
    rows = pd.concat([_rows("M", 0, [0.9], []), _rows("M", 1, [0.9], []), shared])
    table = imbalance_detection(rows, thresholds={("M", 0): 0.5, ("M", 1): 0.5}).set_index("concept_id")
    assert table.loc[0, "precision"] == pytest.approx(0.5) and table.loc[1, "precision"] == pytest.approx(1.0)
    assert (table["n_negative"] == 1).all()


def test_imbalance_without_shared_negatives_is_an_error():
    with pytest.raises(ValueError, match="no shared negatives"):
        imbalance_detection(_rows("M", 0, [1], [0]))


def test_bootstrap_is_deterministic_and_seed_dependent():
    values = np.random.default_rng(0).uniform(size=50)
    first, again, other = bootstrap_ci(values, seed=3), bootstrap_ci(values, seed=3), bootstrap_ci(values, seed=4)
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)
    assert first.low < first.mean < first.high
    assert bootstrap_ci([0.7]).low == bootstrap_ci([0.7]).high == 0.7
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([0.5, float("nan")])


def test_mean_roc_curve_spans_zero_to_one():
    rows = pd.concat([_rows("M", c, [0.9, 0.8], [0.1, 0.2]) for c in range(3)])
    fpr, tpr = mean_roc_curve(rows, "M")
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert tpr[1] == pytest.approx(1.0)  # perfectly separable


def test_unscored_rows_are_excluded_and_counted(caplog):
    rows = _rows("M", 0, [0.9, 0.8, float("nan")], [0.1, float("nan")])
    table = concept_detection(rows)
    assert table.loc[0, "auroc"] == 1.0 and table.loc[0, "n_unscored"] == 2
    assert (table.loc[0, "n_positive"], table.loc[0, "n_negative"]) == (2, 1)
    assert summarize_detection(table, n_resamples=10).loc[0, "n_unscored"] == 2
    assert "excluded" in caplog.text
