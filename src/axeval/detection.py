"""Concept detection: per-concept AUROC, hard negatives at the Youden threshold, F1 under class imbalance.

Input rows hold one max-pooled latent score each: `method, concept_id, category, score`, `category` one
of "positive", "negative", "hard negative" (axdata.schema.CATEGORIES). The AUROC compares a concept's
positives with its negatives; hard negatives never enter it but are scored separately at the concept's
Youden-J threshold, and a concept without hard negatives is counted as such (AxBench dropped them
through a label-name mismatch, without a word).

>>> import pandas as pd
>>> rows = pd.DataFrame({
...     "method": "DiffMean", "concept_id": 0,
...     "category": ["positive"] * 3 + ["negative"] * 3 + ["hard negative"] * 2,
...     "score": [0.9, 0.8, 0.4, 0.5, 0.1, 0.2, 0.95, 0.3]})
>>> table = concept_detection(rows)
>>> round(float(table.loc[0, "auroc"]), 4), float(table.loc[0, "hard_negative_accuracy"])
(0.8889, 0.5)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from axdata.schema import CATEGORIES, SHARED_NEGATIVE_ID
from axeval.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_ci

logger = logging.getLogger(__name__)

POSITIVE, NEGATIVE, HARD_NEGATIVE = CATEGORIES
REQUIRED_COLUMNS = ("method", "concept_id", "category", "score")
# Optional column of imbalance frames: which concept's detector produced a shared negative's score.
SCORED_CONCEPT_COLUMN = "scored_concept_id"


def check_rows(rows: pd.DataFrame, source: str = "detection rows") -> None:
    """Raise ValueError naming the missing column, the unknown category or the missing score."""
    missing = [column for column in REQUIRED_COLUMNS if column not in rows.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; latent inference writes {list(REQUIRED_COLUMNS)} "
            "(rename the score column, e.g. AxBench's '<Method>_max_act', to 'score')."
        )
    unknown = sorted(set(rows["category"].dropna().unique()) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"{source}: unknown category value(s) {unknown}; expected one of {list(CATEGORIES)}.")
    if rows["category"].isna().any():
        raise ValueError(
            f"{source}: {int(rows['category'].isna().sum())} row(s) without a category; every row must be a "
            "positive, negative or hard negative."
        )


def _scored(rows: pd.DataFrame, source: str) -> pd.DataFrame:
    """Rows with a score. A missing score (e.g. a rating the prompt detector could not parse) is excluded and
    counted, never turned into a number."""
    unscored = rows["score"].isna()
    if unscored.any():
        counts = rows[unscored].groupby("method").size().to_dict()
        logger.warning("%s: rows without a score are excluded from the metrics: %s", source, counts)
    return rows[~unscored]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's, ties counted half), NaN when a class is missing."""
    labels = np.asarray(labels, dtype=int)
    if labels.min(initial=1) == labels.max(initial=0) or len(labels) == 0:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=float)))


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising TPR − FPR (predict positive when score ≥ threshold).

    Among tied maxima the highest threshold wins; the tie test is tolerant because 2/3 and 1 − 1/3 differ
    in floating point. +inf when no finite threshold beats chance (AxBench then reports nothing).
    """
    fpr, tpr, thresholds = roc_curve(np.asarray(labels, dtype=int), np.asarray(scores, dtype=float))
    youden = tpr - fpr
    return float(thresholds[int(np.flatnonzero(np.isclose(youden, youden.max(), rtol=0, atol=1e-12))[0])])


def max_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold on the precision-recall curve with the highest F1 (as AxBench's LatentStatsEvaluator)."""
    precision, recall, thresholds = precision_recall_curve(
        np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def precision_recall_f1(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """Binary precision, recall and F1 of `score ≥ threshold` (0 where undefined, as scikit-learn)."""
    labels = np.asarray(labels, dtype=bool)
    predicted = np.asarray(scores, dtype=float) >= threshold
    true_positives = float(np.sum(predicted & labels))
    precision = true_positives / predicted.sum() if predicted.any() else 0.0
    recall = true_positives / labels.sum() if labels.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def _accuracy(correct: np.ndarray) -> float:
    return float(np.mean(correct)) if len(correct) else float("nan")


def _one_concept(group: pd.DataFrame) -> dict[str, float | int]:
    category = group["category"].to_numpy()
    score = group["score"].to_numpy(dtype=float)
    positives, negatives, hard = score[category == POSITIVE], score[category == NEGATIVE], score[category == HARD_NEGATIVE]
    result: dict[str, float | int] = {
        "n_positive": len(positives), "n_negative": len(negatives), "n_hard_negative": len(hard),
    }
    nan = float("nan")
    if not len(positives) or not len(negatives):
        return result | dict.fromkeys(
            ("auroc", "youden_threshold", "positive_accuracy", "negative_accuracy", "hard_negative_accuracy",
             "macro_accuracy", "f1_threshold", "precision", "recall", "f1"), nan)
    labels = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    balanced = np.r_[positives, negatives]
    threshold = youden_threshold(labels, balanced)
    if np.isfinite(threshold):
        accuracies = {
            "positive_accuracy": _accuracy(positives >= threshold),
            "negative_accuracy": _accuracy(negatives < threshold),
            "hard_negative_accuracy": _accuracy(hard < threshold),
        }
    else:
        accuracies = dict.fromkeys(("positive_accuracy", "negative_accuracy", "hard_negative_accuracy"), nan)
    f1_threshold = max_f1_threshold(labels, balanced)
    precision, recall, f1 = precision_recall_f1(labels, balanced, f1_threshold)
    return result | {
        "auroc": auroc(labels, balanced),
        "youden_threshold": threshold,
        **accuracies,
        # AxBench's macro accuracy: positives and hard negatives weigh the same.
        "macro_accuracy": (accuracies["positive_accuracy"] + accuracies["hard_negative_accuracy"]) / 2,
        "f1_threshold": f1_threshold,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def concept_detection(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, concept): AUROC, Youden threshold, per-class accuracies, balanced P/R/F1.

    Shared negatives (concept_id −1) belong to the imbalance split and are ignored here. A concept that
    lacks positives or negatives gets NaN metrics (and a warning), never a made-up number.
    """
    check_rows(rows)
    own = rows[rows["concept_id"] != SHARED_NEGATIVE_ID]
    unscored = own["score"].isna().groupby([own["method"], own["concept_id"]]).sum()
    own = _scored(own, "detection rows")
    records = [
        {"method": method, "concept_id": int(concept_id), **_one_concept(group),
         "n_unscored": int(unscored.get((method, concept_id), 0))}
        for (method, concept_id), group in own.groupby(["method", "concept_id"], sort=True)
    ]
    table = pd.DataFrame.from_records(records)
    if len(table):
        undefined = table[table["auroc"].isna()]
        for method, group in undefined.groupby("method"):
            logger.warning(
                "%s: %d concept(s) lack positives or negatives, so their AUROC is undefined and they are left "
                "out of the mean: %s", method, len(group), group["concept_id"].tolist()[:10])
    return table


def summarize_detection(
    per_concept: pd.DataFrame,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """One row per method: mean AUROC with its bootstrap CI over concepts, hard-negative accuracy, F1.

    `n_undefined` counts concepts whose AUROC is undefined; `n_hard_negative_concepts` counts the concepts
    that had hard negatives to score.
    """
    records = []
    for method, group in per_concept.groupby("method", sort=True):
        defined = group["auroc"].dropna()
        hard = group["hard_negative_accuracy"].dropna()
        records.append({
            "method": method,
            "n_concepts": len(group),
            "n_undefined": int(group["auroc"].isna().sum()),
            **bootstrap_ci(defined.to_numpy(), n_resamples, confidence, seed).as_dict("auroc_"),
            **bootstrap_ci(hard.to_numpy(), n_resamples, confidence, seed).as_dict("hard_negative_accuracy_"),
            "n_hard_negative_concepts": len(hard),
            "n_hard_negatives": int(group["n_hard_negative"].sum()),
            "n_unscored": int(group["n_unscored"].sum()) if "n_unscored" in group else 0,
            "macro_accuracy": float(group["macro_accuracy"].mean()),
            "f1": float(group["f1"].mean()),
        })
    return pd.DataFrame.from_records(records)


def imbalance_detection(rows: pd.DataFrame, thresholds: Mapping[tuple[str, int], float] | None = None) -> pd.DataFrame:
    """Precision, recall and F1 of each concept's positives against the shared negatives (≈1:100).

    Shared negatives have concept_id −1. With a `scored_concept_id` column a shared negative's score counts
    only for that concept's detector (inference scores every negative with every concept); without it,
    each shared negative's one score is compared with every concept's positives. A concept's own
    negatives and hard negatives are not part of this split. `thresholds[(method, concept_id)]` fixes a
    concept's threshold (e.g. the balanced split's); otherwise the F1-optimal threshold is used, an
    optimistic bound that the `threshold_source` column names.
    """
    check_rows(rows, "imbalance rows")
    rows = _scored(rows, "imbalance rows")
    shared = rows[rows["concept_id"] == SHARED_NEGATIVE_ID]
    if shared.empty:
        raise ValueError(
            "imbalance rows: no shared negatives (concept_id -1); pass the latent_imbalance inference "
            "output, not the balanced latent split."
        )
    positives = rows[(rows["concept_id"] != SHARED_NEGATIVE_ID) & (rows["category"] == POSITIVE)]
    per_concept_scores = SCORED_CONCEPT_COLUMN in rows.columns
    records = []
    for (method, concept_id), group in positives.groupby(["method", "concept_id"], sort=True):
        negatives = shared[shared["method"] == method]
        if per_concept_scores:
            negatives = negatives[negatives[SCORED_CONCEPT_COLUMN] == concept_id]
        if negatives.empty:
            raise ValueError(
                f"imbalance rows: method {method!r} has positives for concept {concept_id} but no shared "
                "negatives scored by it; score the shared negatives with every method's detectors."
            )
        labels = np.r_[np.ones(len(group)), np.zeros(len(negatives))]
        scores = np.r_[group["score"].to_numpy(float), negatives["score"].to_numpy(float)]
        key = (method, int(concept_id))
        given = thresholds is not None and key in thresholds
        threshold = float(thresholds[key]) if given else max_f1_threshold(labels, scores)
        precision, recall, f1 = precision_recall_f1(labels, scores, threshold)
        records.append({
            "method": method, "concept_id": int(concept_id), "n_positive": len(group), "n_negative": len(negatives),
            "threshold": threshold, "threshold_source": "given" if given else "max_f1",
            "precision": precision, "recall": recall, "f1": f1,
        })
    return pd.DataFrame.from_records(records)


def summarize_imbalance(
    per_concept: pd.DataFrame,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """One row per method: mean precision and recall, mean F1 with its bootstrap CI over concepts."""
    records = []
    for method, group in per_concept.groupby("method", sort=True):
        records.append({
            "method": method,
            "precision": float(group["precision"].mean()),
            "recall": float(group["recall"].mean()),
            **bootstrap_ci(group["f1"].to_numpy(float), n_resamples, confidence, seed).as_dict("f1_"),
            "negatives_per_positive": float(group["n_negative"].sum() / group["n_positive"].sum()),
        })
    return pd.DataFrame.from_records(records)


def mean_roc_curve(rows: pd.DataFrame, method: str, grid_size: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve of `method` averaged over concepts (TPR interpolated on a common FPR grid)."""
    own = rows[(rows["method"] == method) & rows["category"].isin([POSITIVE, NEGATIVE])
               & (rows["concept_id"] != SHARED_NEGATIVE_ID)]
    grid = np.linspace(0.0, 1.0, grid_size)
    curves = []
    for _, group in own.groupby("concept_id"):
        labels = (group["category"] == POSITIVE).to_numpy(int)
        if labels.min() == labels.max():
            continue
        fpr, tpr, _ = roc_curve(labels, group["score"].to_numpy(float))
        curves.append(np.interp(grid, fpr, tpr))
    if not curves:
        raise ValueError(f"mean_roc_curve: method {method!r} has no concept with both positives and negatives.")
    mean = np.mean(curves, axis=0)
    mean[0] = 0.0
    return grid, mean
