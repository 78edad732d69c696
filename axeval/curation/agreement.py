"""Judge–human agreement on 0–2 ratings (plain numpy / scipy / scikit-learn; no Argilla needed).

Input: the pulled labels, one row per record × annotator with `record_id`, `annotator`,
`human_<criterion>` and `judge_<criterion>` for criterion in concept / instruction / fluency. Every
(record, annotator) pair is one comparison of the judge with a person.

Per criterion: quadratic-weighted Cohen's κ, Spearman's ρ, exact agreement and the 3×3 confusion matrix
(rows: judge 0/1/2, columns: human 0/1/2). For the harmonic-mean score (AxBench's per-generation
score, 0 when any rating is 0): Spearman's ρ, the mean absolute difference, exact agreement, and κ on the
score rounded to the nearest rating (0 / 1 / 2). Between people (records with ≥ 2 annotators): per pair
of annotators κ on their shared records, the mean over pairs, and exact agreement.

A statistic that is undefined (a constant rater: κ and ρ divide by zero) is NaN with a `reason`, never a
crash and never a made-up 0 or 1.

>>> agreement = judge_human_agreement(pd.DataFrame({
...     "record_id": ["a", "b", "c", "d"], "annotator": ["u"] * 4,
...     "judge_concept": [0, 1, 2, 2], "human_concept": [0, 1, 2, 1],
...     "judge_instruction": [2, 2, 2, 2], "human_instruction": [2, 2, 2, 2],
...     "judge_fluency": [1, 2, 2, 0], "human_fluency": [1, 2, 2, 0]}))
>>> round(agreement.criteria["concept"].kappa, 4), agreement.criteria["concept"].exact
(0.8, 0.75)
>>> agreement.criteria["instruction"].kappa, agreement.criteria["instruction"].kappa_reason
(nan, 'both raters gave one constant rating (2)')
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from axdata.errors import InputError
from axeval.judge_templates import CRITERIA
from axeval.steering import _harmonic_mean

LABELS = (0, 1, 2)
SCORE = "score"  # the harmonic mean of the three ratings


@dataclass
class PairStats:
    """Agreement of two raters over the same items."""

    n: int
    kappa: float  # quadratic-weighted Cohen's κ
    spearman: float
    exact: float  # share of items with the same rating
    kappa_reason: str = ""
    spearman_reason: str = ""
    confusion: list[list[int]] = field(default_factory=list)  # rows: first rater 0/1/2, columns: second
    mean_abs_diff: float = math.nan


@dataclass
class AnnotatorStats:
    """Agreement between people on records that several of them rated."""

    n_records: int  # records with ≥ 2 annotators
    pairs: dict[str, PairStats]  # "alice~bob" → their agreement on shared records
    mean_pairwise_kappa: float
    exact: float  # share of records (with ≥ 2 annotators) where all annotators agree
    reason: str = ""


@dataclass
class Agreement:
    """Judge–human agreement per criterion and on the harmonic-mean score, plus inter-annotator agreement."""

    n_records: int
    n_annotators: int
    n_comparisons: int  # (record, annotator) pairs
    criteria: dict[str, PairStats]
    score: PairStats
    annotators: dict[str, AnnotatorStats]

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def table(self) -> pd.DataFrame:
        """One row per criterion (+ score): n, κ, ρ, exact, mean |diff|."""
        rows = []
        for name, stats in [*self.criteria.items(), (SCORE, self.score)]:
            inter = self.annotators.get(name)
            rows.append({"criterion": name, "n": stats.n, "kappa_quadratic": stats.kappa,
                         "spearman": stats.spearman, "exact_agreement": stats.exact,
                         "mean_abs_diff": stats.mean_abs_diff,
                         "inter_annotator_kappa": inter.mean_pairwise_kappa if inter else math.nan})
        return pd.DataFrame(rows)


def pair_stats(first: np.ndarray, second: np.ndarray, confusion: bool = True) -> PairStats:
    """κ (quadratic), ρ, exact agreement and confusion matrix of two 0–2 rating vectors."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep].astype(int), b[keep].astype(int)
    n = len(a)
    if n == 0:
        return PairStats(0, math.nan, math.nan, math.nan, "no items", "no items",
                         [[0] * 3 for _ in LABELS] if confusion else [])
    kappa, kappa_reason = _kappa(a, b)
    rho, rho_reason = _spearman(a, b)
    matrix = confusion_matrix(a, b, labels=list(LABELS)).tolist() if confusion else []
    return PairStats(n, kappa, rho, float(np.mean(a == b)), kappa_reason, rho_reason, matrix,
                     float(np.mean(np.abs(a - b))))


def _kappa(a: np.ndarray, b: np.ndarray) -> tuple[float, str]:
    if len(set(a.tolist())) == 1 and len(set(b.tolist())) == 1:
        same = f"one constant rating ({a[0]})" if a[0] == b[0] else f"constant ratings ({a[0]} and {b[0]})"
        return math.nan, f"both raters gave {same}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(cohen_kappa_score(a, b, labels=list(LABELS), weights="quadratic"))
    return (value, "") if not math.isnan(value) else (math.nan, "chance agreement is total")


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, str]:
    if len(a) < 2:
        return math.nan, "fewer than 2 items"
    constant = [name for name, values in (("judge", a), ("human", b)) if np.all(values == values[0])]
    if constant:
        return math.nan, f"{' and '.join(constant)} rating constant"
    return float(spearmanr(a, b).statistic), ""


def score_stats(judge: np.ndarray, human: np.ndarray) -> PairStats:
    """Agreement on the harmonic-mean score: ρ and mean |diff| on the score, κ/exact/confusion on its rounding."""
    j, h = np.asarray(judge, dtype=float), np.asarray(human, dtype=float)
    keep = ~(np.isnan(j) | np.isnan(h))
    j, h = j[keep], h[keep]
    stats = pair_stats(np.floor(j + 0.5), np.floor(h + 0.5))
    rho, reason = _spearman(j, h) if len(j) else (math.nan, "no items")
    stats.spearman, stats.spearman_reason = rho, reason
    stats.mean_abs_diff = float(np.mean(np.abs(j - h))) if len(j) else math.nan
    return stats


def _check(labels: pd.DataFrame) -> None:
    needed = ["record_id", "annotator", *(f"{p}_{c}" for c in CRITERIA for p in ("judge", "human"))]
    missing = [c for c in needed if c not in labels.columns]
    if missing:
        raise InputError(f"labels: missing column(s) {missing}; pass the dataset `axbench curate fetch` wrote.")
    for column in needed[2:]:
        values = labels[column].dropna()
        bad = values[~values.isin(LABELS)]
        if len(bad):
            raise InputError(f"labels: {column} holds values outside 0, 1, 2: {sorted(set(bad))[:5]}; ratings must "
                             "be mapped back to the 0–2 scale (axbench curate fetch does this).")


def judge_human_agreement(labels: pd.DataFrame) -> Agreement:
    """Every statistic of the module docstring from one labels frame."""
    _check(labels)
    criteria = {c: pair_stats(labels[f"judge_{c}"].to_numpy(), labels[f"human_{c}"].to_numpy()) for c in CRITERIA}
    judge_score = _harmonic_mean(*(labels[f"judge_{c}"].to_numpy(float) for c in CRITERIA), suppression=False)
    human_score = _harmonic_mean(*(labels[f"human_{c}"].to_numpy(float) for c in CRITERIA), suppression=False)
    score = score_stats(judge_score, human_score)
    work = labels.assign(**{f"human_{SCORE}": np.floor(human_score + 0.5)})
    annotators = {name: inter_annotator(work, f"human_{name}") for name in (*CRITERIA, SCORE)}
    return Agreement(n_records=int(labels["record_id"].nunique()), n_annotators=int(labels["annotator"].nunique()),
                     n_comparisons=len(labels), criteria=criteria, score=score, annotators=annotators)


def inter_annotator(labels: pd.DataFrame, column: str) -> AnnotatorStats:
    """Pairwise κ between annotators on the records both rated; exact = all annotators of a record agree."""
    wide = labels.pivot_table(index="record_id", columns="annotator", values=column, aggfunc="first")
    shared = wide[wide.notna().sum(axis=1) >= 2]
    if shared.empty:
        return AnnotatorStats(0, {}, math.nan, math.nan, "no record has two or more annotators")
    pairs = {}
    for first, second in itertools.combinations(sorted(wide.columns), 2):
        both = wide[[first, second]].dropna()
        if len(both):
            pairs[f"{first}~{second}"] = pair_stats(both[first].to_numpy(), both[second].to_numpy(), confusion=False)
    kappas = [p.kappa for p in pairs.values() if not math.isnan(p.kappa)]
    exact = float(np.mean([len(set(row.dropna())) == 1 for _, row in shared.iterrows()]))
    return AnnotatorStats(len(shared), pairs, float(np.mean(kappas)) if kappas else math.nan, exact,
                          "" if kappas else "κ is undefined for every pair of annotators")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
