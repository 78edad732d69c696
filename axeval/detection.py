"""Concept detection: per-concept AUROC, hard negatives at the Youden threshold, F1 under class imbalance.

Input rows hold one max-pooled latent score each: `method, concept_id, category, score`, `category` one
of "positive", "negative", "hard negative" (axdata.schema.CATEGORIES). Each number equals the one of
AxBench's evaluator that defines it (docs/protocol.md; the tests compare with re-implementations of the
reference evaluators on random inputs):

- scores are min-max normalised over each concept's rows first (NaN → 0 when all are equal), as every
  AxBench latent evaluator does, so ties and thresholds fall exactly where AxBench's do;
- non-finite scores: ±inf (e.g. an fp16 overflow) ranks above / below every finite score — every number here
  depends only on the order of the scores, so that is exact (AxBench's normalisation turns the whole concept
  into NaN → 0, AUROC 0.5); a missing score (NaN) of a text rater is excluded and counted, and a NaN score a
  residual detector computed (its row has a `max_token_index`) is refused with its rows named;
- AUROC (`AUCROCEvaluator`): positives vs negatives; hard negatives never enter it (AxBench drops them
  through a label-name mismatch; we keep them out on purpose and score them apart, counted);
- hard negatives (`HardNegativeEvaluator`): accuracy at the Youden-J threshold of positives vs negatives,
  the first maximum of `tpr − fpr` (the highest threshold among exact ties); macro accuracy = mean of the
  positive and hard-negative accuracies;
- balanced P/R/F1 (`LatentStatsEvaluator`): threshold = the F1-maximal point of the precision-recall
  curve of positives vs negatives; precision, recall and F1 then count every row of the concept, hard
  negatives as negatives;
- imbalance F1 (the same evaluator on the concept's own rows plus the ≈1:100 shared negative pool).

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
# Latent inference fills this column for residual detectors only: such a row's score was computed from a token,
# so NaN there is a numeric failure, not a rater's missing answer.
TOKEN_COLUMN = "max_token_index"
# Where ±inf scores go on the normalised [0, 1] scale: beyond every finite score, keeping the order exact.
_POSITIVE_INFINITY_RANK, _NEGATIVE_INFINITY_RANK = 2.0, -1.0


def check_rows(rows: pd.DataFrame, source: str = "detection rows") -> None:
    """Raise ValueError naming the missing column, the unknown category or the missing category, or on no rows."""
    missing = [column for column in REQUIRED_COLUMNS if column not in rows.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; latent inference writes {list(REQUIRED_COLUMNS)} "
            "(rename the score column, e.g. AxBench's '<Method>_max_act', to 'score')."
        )
    if rows.empty:
        raise ValueError(f"{source}: no rows, so there is nothing to score; pass the latent inference output "
                         "(one row per scored text).")
    unknown = sorted(set(rows["category"].dropna().unique()) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"{source}: unknown category value(s) {unknown}; expected one of {list(CATEGORIES)}.")
    if rows["category"].isna().any():
        raise ValueError(
            f"{source}: {int(rows['category'].isna().sum())} row(s) without a category; every row must be a "
            "positive, negative or hard negative."
        )


def _row_names(rows: pd.DataFrame, limit: int = 10) -> str:
    """`method concept C row R, …` for the first `limit` rows (R: the row's index in the input)."""
    named = [f"{method} concept {concept_id} row {index}"
             for index, method, concept_id in zip(rows.index[:limit], rows["method"][:limit], rows["concept_id"][:limit])]
    return ", ".join(named) + (f" (and {len(rows) - limit} more)" if len(rows) > limit else "")


def _scored(rows: pd.DataFrame, source: str) -> pd.DataFrame:
    """Rows with a score. A missing score (e.g. a rating the prompt detector could not parse) is excluded and
    counted, never turned into a number; a NaN that a residual detector computed is refused."""
    unscored = rows["score"].isna()
    if TOKEN_COLUMN in rows.columns:
        computed = unscored & rows[TOKEN_COLUMN].notna()
        if computed.any():
            raise ValueError(
                f"{source}: {int(computed.sum())} detector score(s) are NaN although they were read from a token "
                f"({_row_names(rows[computed])}); a NaN cannot be ranked. It comes from the detector's arithmetic "
                "(NaN weights, or an overflow in half precision): check the dictionary's weights and re-run latent "
                "inference with the target model in float32."
            )
    if unscored.any():
        counts = rows[unscored].groupby("method").size().to_dict()
        logger.warning("%s: rows without a score are excluded from the metrics: %s (%s)", source, counts,
                       _row_names(rows[unscored], limit=5))
    return rows[~unscored]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's, ties counted half), NaN when a class is missing."""
    labels = np.asarray(labels, dtype=int)
    if labels.min(initial=1) == labels.max(initial=0) or len(labels) == 0:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=float)))


def normalise(scores: np.ndarray) -> np.ndarray:
    """Min-max normalised scores, 0 where that is undefined (all equal) — AxBench's per-concept preprocessing.

    Only the finite scores set the scale; +inf maps to 2 and −inf to −1, above and below every finite score,
    so the order of the scores (all the detection metrics use) is kept exactly.

    >>> normalise(np.array([2.0, 4.0, np.inf, -np.inf, 3.0])).tolist()
    [0.0, 1.0, 2.0, -1.0, 0.5]
    """
    scores = np.asarray(scores, dtype=float)
    finite = np.isfinite(scores)
    if not finite.any():
        return np.where(scores == np.inf, _POSITIVE_INFINITY_RANK, np.where(scores == -np.inf,
                                                                              _NEGATIVE_INFINITY_RANK, scores))
    low, high = scores[finite].min(), scores[finite].max()
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.nan_to_num((scores - low) / (high - low), nan=0.0)
    return np.where(scores == np.inf, _POSITIVE_INFINITY_RANK,
                    np.where(scores == -np.inf, _NEGATIVE_INFINITY_RANK, normalised))


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising TPR − FPR (predict positive when score ≥ threshold).

    The first maximum along scikit-learn's ROC curve, i.e. the highest threshold among exactly tied maxima
    (`argmax(tpr − fpr)`, as AxBench). +inf when no finite threshold beats chance (AxBench then reports nothing).
    """
    fpr, tpr, thresholds = roc_curve(np.asarray(labels, dtype=int), np.asarray(scores, dtype=float))
    return float(thresholds[int(np.argmax(tpr - fpr))])


def max_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold on the precision-recall curve with the highest F1 (as AxBench's LatentStatsEvaluator)."""
    precision, recall, thresholds = precision_recall_curve(
        np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    )
    f1 = np.zeros_like(precision)
    defined = precision + recall > 0
    f1[defined] = 2 * precision[defined] * recall[defined] / (precision[defined] + recall[defined])
    # The curve's last point (recall 0) has F1 0, so the first maximum is always a real threshold.
    return float(thresholds[int(np.argmax(f1))])


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


_METRICS = ("auroc", "youden_threshold", "positive_accuracy", "negative_accuracy", "hard_negative_accuracy",
            "macro_accuracy", "f1_threshold", "precision", "recall", "f1")


def _denormalise(value: float, raw: np.ndarray) -> float:
    """A threshold on the normalised scale, back on the raw score scale (for readers of the per-concept table);
    a threshold at the place of an infinite score is that infinity."""
    if value in (_POSITIVE_INFINITY_RANK, _NEGATIVE_INFINITY_RANK):
        return np.inf if value == _POSITIVE_INFINITY_RANK else -np.inf
    finite = raw[np.isfinite(raw)]
    if not len(finite):
        return value
    low, high = float(finite.min()), float(finite.max())
    return value * (high - low) + low if np.isfinite(value) and high > low else value


def _one_concept(group: pd.DataFrame) -> dict[str, float | int]:
    category = group["category"].to_numpy()
    raw = group["score"].to_numpy(dtype=float)
    score = normalise(raw)
    is_positive, is_negative, is_hard = category == POSITIVE, category == NEGATIVE, category == HARD_NEGATIVE
    positives, negatives, hard = score[is_positive], score[is_negative], score[is_hard]
    result: dict[str, float | int] = {
        "n_positive": len(positives), "n_negative": len(negatives), "n_hard_negative": len(hard),
    }
    nan = float("nan")
    if not len(positives) or not len(negatives):
        return result | dict.fromkeys(_METRICS, nan)
    balanced = is_positive | is_negative
    labels, balanced_scores = is_positive[balanced].astype(int), score[balanced]
    threshold = youden_threshold(labels, balanced_scores)
    if np.isfinite(threshold):
        accuracies = {
            "positive_accuracy": _accuracy(positives >= threshold),
            "negative_accuracy": _accuracy(negatives < threshold),
            "hard_negative_accuracy": _accuracy(hard < threshold),
        }
    else:
        accuracies = dict.fromkeys(("positive_accuracy", "negative_accuracy", "hard_negative_accuracy"), nan)
    f1_threshold = max_f1_threshold(labels, balanced_scores)
    # AxBench's LatentStatsEvaluator scores every row of the concept, hard negatives counted as negatives.
    precision, recall, f1 = precision_recall_f1(is_positive, score, f1_threshold)
    return result | {
        "auroc": auroc(labels, balanced_scores),
        "youden_threshold": _denormalise(threshold, raw),
        **accuracies,
        # AxBench's macro accuracy: positives and hard negatives weigh the same.
        "macro_accuracy": (accuracies["positive_accuracy"] + accuracies["hard_negative_accuracy"]) / 2,
        "f1_threshold": _denormalise(f1_threshold, raw),
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
    if own.empty:
        raise ValueError("detection rows: only shared negatives (concept_id -1); pass the latent inference output, "
                         "whose rows belong to concepts (the shared pool goes to the imbalance metrics).")
    _scored(own, "detection rows")  # refuses computed NaNs, logs the missing scores
    records = []
    # Every concept gets a row, also one whose scores are all missing: it is then undefined and counted.
    for (method, concept_id), group in own.groupby(["method", "concept_id"], sort=True):
        has_score = group["score"].notna()
        records.append({"method": method, "concept_id": int(concept_id), **_one_concept(group[has_score]),
                        "n_unscored": int((~has_score).sum())})
    table = pd.DataFrame.from_records(records)
    undefined = table[table["auroc"].isna()]
    for method, group in undefined.groupby("method"):
        logger.warning(
            "%s: %d concept(s) lack positives or negatives with a score, so their AUROC is undefined and they are left "
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
    """Precision, recall and F1 of each concept's detector on its own rows plus the shared negatives (≈1:100).

    As AxBench scores class imbalance (its LatentStatsEvaluator on the concept's data plus the shared pool):
    per concept, the rows are its own positives, negatives and hard negatives (all counted, hard negatives as
    negatives) and the shared negatives (concept_id −1), scores min-max normalised over those rows. With a
    `scored_concept_id` column a shared negative's score counts only for that concept's detector (inference
    scores every negative with every concept); without it, each shared negative's one score is used for every
    concept. `thresholds[(method, concept_id)]` fixes a concept's threshold on the raw score scale (e.g. one
    chosen on the balanced split); otherwise the F1-optimal threshold of positives vs negatives is used
    (AxBench's choice, an optimistic bound), as the `threshold_source` column says.
    """
    check_rows(rows, "imbalance rows")
    rows = _scored(rows, "imbalance rows")
    shared = rows[rows["concept_id"] == SHARED_NEGATIVE_ID]
    if shared.empty:
        raise ValueError(
            "imbalance rows: no shared negatives (concept_id -1); pass the latent_imbalance inference "
            "output, not the balanced latent split."
        )
    own_rows = rows[rows["concept_id"] != SHARED_NEGATIVE_ID]
    per_concept_scores = SCORED_CONCEPT_COLUMN in rows.columns
    records = []
    for (method, concept_id), own in own_rows.groupby(["method", "concept_id"], sort=True):
        if not (own["category"] == POSITIVE).any():
            continue
        negatives = shared[shared["method"] == method]
        if per_concept_scores:
            negatives = negatives[negatives[SCORED_CONCEPT_COLUMN] == concept_id]
        if negatives.empty:
            raise ValueError(
                f"imbalance rows: method {method!r} has positives for concept {concept_id} but no shared "
                "negatives scored by it; score the shared negatives with every method's detectors."
            )
        group = pd.concat([own, negatives], ignore_index=True)
        labels = (group["category"] == POSITIVE).to_numpy()
        raw = group["score"].to_numpy(float)
        key = (method, int(concept_id))
        given = thresholds is not None and key in thresholds
        if given:
            threshold = float(thresholds[key])
            precision, recall, f1 = precision_recall_f1(labels, raw, threshold)
        else:
            score = normalise(raw)
            balanced = (group["category"] != HARD_NEGATIVE).to_numpy()
            normalised_threshold = max_f1_threshold(labels[balanced], score[balanced])
            precision, recall, f1 = precision_recall_f1(labels, score, normalised_threshold)
            threshold = _denormalise(normalised_threshold, raw)
        records.append({
            "method": method, "concept_id": int(concept_id), "n_positive": int(labels.sum()),
            "n_negative": int((~labels).sum()), "n_shared_negative": len(negatives),
            "threshold": threshold, "threshold_source": "given" if given else "max_f1",
            "precision": precision, "recall": recall, "f1": f1,
        })
    return pd.DataFrame.from_records(records)


def imbalance_frame(latent_rows: pd.DataFrame, imbalance_rows: pd.DataFrame) -> pd.DataFrame:
    """The rows `imbalance_detection` scores: every concept's own rows from latent inference (`latent` mode)
    and the shared negatives from the `latent_imbalance` mode (its copies of the positives are dropped)."""
    check_rows(latent_rows, "latent rows")
    check_rows(imbalance_rows, "imbalance rows")
    own = latent_rows[latent_rows["concept_id"] != SHARED_NEGATIVE_ID]
    return pd.concat([own, imbalance_rows[imbalance_rows["concept_id"] == SHARED_NEGATIVE_ID]], ignore_index=True)


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
               & (rows["concept_id"] != SHARED_NEGATIVE_ID) & rows["score"].notna()]
    grid = np.linspace(0.0, 1.0, grid_size)
    curves = []
    for _, group in own.groupby("concept_id"):
        labels = (group["category"] == POSITIVE).to_numpy(int)
        if labels.min() == labels.max():
            continue
        scores = group["score"].to_numpy(float)
        # normalise keeps the order and moves ±inf beyond every finite score: the ROC curve is the same.
        fpr, tpr, _ = roc_curve(labels, scores if np.isfinite(scores).all() else normalise(scores))
        curves.append(np.interp(grid, fpr, tpr))
    if not curves:
        raise ValueError(f"mean_roc_curve: method {method!r} has no concept with both positives and negatives.")
    mean = np.mean(curves, axis=0)
    mean[0] = 0.0
    return grid, mean
