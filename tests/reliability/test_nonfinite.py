"""Non-finite inputs are refused or handled exactly, never averaged into a number.

- detector scores: ±inf (an fp16 overflow) ranks above / below every finite score — exact, because every
  detection number (AUROC, Youden accuracies, P/R/F1 at the F1-optimal threshold) depends only on the scores'
  order; before, one +inf made the concept's AUROC exactly 0.5. A missing score (NaN / null: a text rater gave no
  rating) is excluded and counted; a NaN that a residual detector computed (its row has a token) is refused
  with its rows named; no rows at all is refused;
- steering factors: ±inf refused; NaN only for every row of a factor-free method (before, NaN rows next to real
  factors were scored as a factor of their own);
- judge ratings: only 0, 1, 2 or NaN (unparsed); fractions and infinities refused with their rows named;
- the evaluate modules: the same rules (before: `KeyError` on empty or all-NaN input, fractional ratings scored).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import evaluate
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from axeval.cli import app
from axeval.detection import concept_detection, imbalance_detection, mean_roc_curve, summarize_detection
from axeval.metrics.hub import METRICS_DIR
from axeval.steering import score_generations, select_factors

INF = math.inf
RANKED = ("auroc", "positive_accuracy", "negative_accuracy", "hard_negative_accuracy", "macro_accuracy", "precision",
          "recall", "f1")


def _detection_rows(positives, negatives, hard=(), concept_id: int = 0) -> pd.DataFrame:
    categories = ["positive"] * len(positives) + ["negative"] * len(negatives) + ["hard negative"] * len(hard)
    return pd.DataFrame({"method": "M", "concept_id": concept_id, "category": categories,
                         "score": [*positives, *negatives, *hard]})


def _finite_stand_in(scores: pd.Series) -> pd.Series:
    """The same order with finite numbers: +inf → above every finite score, −inf → below (ties kept)."""
    finite = scores[np.isfinite(scores)]
    high, low = (finite.max(), finite.min()) if len(finite) else (0.0, 0.0)
    return scores.replace({INF: high + 1.0, -INF: low - 1.0})


# (positives, negatives, hard negatives, the AUROC the order gives)
INFINITE_SCORES = {
    "+inf positive (fp16 overflow)": ([INF, 0.8, 0.4], [0.5, 0.1, 0.2], [0.3], 8 / 9),
    "-inf negative": ([0.9, 0.8, 0.4], [0.5, -INF, 0.2], [], 8 / 9),
    "+inf negative ranks on top": ([0.9, 0.8, 0.7], [INF, 0.1, 0.2], [0.95], 6 / 9),
    "+inf on both sides ties": ([INF, 0.8], [INF, 0.1], [], 0.625),
    "-inf positive ranks at the bottom": ([-INF, 0.8], [0.5, 0.1], [-INF], 0.5),
    "+inf hard negative": ([0.9, 0.8], [0.1, 0.2], [INF, 0.0], 1.0),
    "every score +inf": ([INF, INF], [INF, INF], [], 0.5),
    "only infinities, separated": ([INF, INF], [-INF], [], 1.0),
}


@pytest.mark.parametrize(("positives", "negatives", "hard", "expected_auroc"), INFINITE_SCORES.values(),
                         ids=INFINITE_SCORES.keys())
def test_infinite_scores_rank_beyond_every_finite_one(positives, negatives, hard, expected_auroc) -> None:
    rows = _detection_rows(positives, negatives, hard)
    table = concept_detection(rows).iloc[0]
    assert table["auroc"] == pytest.approx(expected_auroc)
    # Every detection number equals the one of the same ranking written with finite numbers.
    stand_in = concept_detection(rows.assign(score=_finite_stand_in(rows["score"]))).iloc[0]
    for metric in RANKED:
        assert table[metric] == pytest.approx(stand_in[metric], nan_ok=True), metric
    # The imbalance F1 (own rows + a shared pool holding an overflow too) follows the same order.
    pool = pd.DataFrame({"method": "M", "concept_id": -1, "category": "negative", "score": [INF, 0.0, -INF]})
    skewed = imbalance_detection(pd.concat([rows, pool], ignore_index=True)).iloc[0]
    skewed_stand_in = imbalance_detection(pd.concat([rows, pool], ignore_index=True).pipe(
        lambda frame: frame.assign(score=_finite_stand_in(frame["score"])))).iloc[0]
    for metric in ("precision", "recall", "f1"):
        assert skewed[metric] == pytest.approx(skewed_stand_in[metric]), metric


def test_a_threshold_at_an_infinite_score_is_reported_as_that_infinity() -> None:
    table = concept_detection(_detection_rows([INF, INF], [0.5, 0.1])).iloc[0]
    assert table["youden_threshold"] == INF and table["f1_threshold"] == INF
    assert (table["positive_accuracy"], table["negative_accuracy"], table["f1"]) == (1.0, 1.0, 1.0)
    finite = concept_detection(_detection_rows([0.9, 0.7], [0.5, -INF])).iloc[0]
    assert finite["youden_threshold"] == pytest.approx(0.7)  # on the raw scale of the finite scores


def test_the_report_roc_curve_takes_infinite_and_missing_scores() -> None:
    rows = pd.concat([_detection_rows([INF, 0.8], [0.1, -INF]), _detection_rows([0.9, np.nan], [0.2], concept_id=1)])
    _, tpr = mean_roc_curve(rows, "M")
    assert np.isfinite(tpr).all() and tpr[-1] == 1.0 and tpr[1] == 1.0  # both concepts separate perfectly


def test_the_report_ranks_an_overflow_and_draws_its_roc_curve(tmp_path: Path) -> None:
    from axeval.report import ReportInputs, build_report

    rows = pd.concat([_detection_rows([INF, 0.8, 0.4], [0.5, 0.1, 0.2]), _detection_rows([0.9, np.nan], [0.2], concept_id=1)])
    report = build_report(ReportInputs(detection_rows=rows), tmp_path, n_resamples=10)
    summary = report.detection_summary.iloc[0]
    assert summary["auroc_mean"] == pytest.approx((8 / 9 + 1.0) / 2) and summary["n_unscored"] == 1
    assert report.files["plot_roc"].exists()


# (scores, a max_token_index column or None, what happens)
NAN_SCORES = {
    "a rater's missing rating is excluded and counted": ([0.9, np.nan, 0.1], None, "counted"),
    "null token index: a text rater's NaN": ([0.9, np.nan, 0.1], [None, None, None], "counted"),
    "a residual detector's NaN is refused": ([0.9, np.nan, 0.1], [3, 5, 1], "refused"),
    "every score missing": ([np.nan, np.nan, np.nan], None, "undefined"),
}


@pytest.mark.parametrize(("scores", "tokens", "outcome"), NAN_SCORES.values(), ids=NAN_SCORES.keys())
def test_nan_scores_are_counted_or_refused_never_scored(scores, tokens, outcome) -> None:
    rows = _detection_rows(scores[:2], scores[2:])
    if tokens is not None:
        rows["max_token_index"] = pd.array(tokens, dtype="Int64")
    if outcome == "refused":
        with pytest.raises(ValueError, match=r"NaN although .*M concept 0 row 1.*float32"):
            concept_detection(rows)
        return
    table = concept_detection(rows)
    summary = summarize_detection(table, n_resamples=10).iloc[0]
    assert summary["n_unscored"] == int(np.isnan(scores).sum())
    if outcome == "counted":
        assert table.loc[0, "auroc"] == 1.0 and table.loc[0, "n_positive"] == 1
    else:  # the concept stays in the table, undefined and counted — not a KeyError, not 0.5
        assert math.isnan(table.loc[0, "auroc"]) and (summary["n_concepts"], summary["n_undefined"]) == (1, 1)


def test_no_detection_rows_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="detection rows: no rows"):
        concept_detection(_detection_rows([], []))
    with pytest.raises(ValueError, match="only shared negatives"):
        concept_detection(_detection_rows([], [0.1], concept_id=-1))


def _judged(**overrides) -> pd.DataFrame:
    """Two factors, one concept, one prompt per half and factor; all ratings 2 unless overridden."""
    frame = pd.DataFrame({"method": "M", "concept_id": 0, "prompt_id": [0, 0, 1, 1],
                          "half": ["selection", "selection", "heldout", "heldout"], "factor": [1.0, 2.0, 1.0, 2.0],
                          "concept_rating": 2.0, "instruction_rating": 2.0, "fluency_rating": 2.0})
    for column, values in overrides.items():
        frame[column] = values
    return frame


# column, its values, the message (the offending rows are named)
REFUSED_STEERING = {
    "a fractional rating": ("concept_rating", [2.0, 1.5, 2.0, 2.0], r"'concept_rating' holds values outside.*row 1 "),
    "an infinite rating": ("fluency_rating", [2.0, 2.0, INF, 2.0], r"'fluency_rating' holds values outside.*row 2 "),
    "a negative infinite rating": ("instruction_rating", [-INF, 2.0, 2.0, 2.0], r"outside.*row 0 "),
    "a rating that is text": ("concept_rating", ["2", "two", 2.0, 2.0], r"'concept_rating' must hold numbers.*row 1 "),
    "an infinite factor": ("factor", [1.0, INF, 1.0, INF], r"infinite steering factors: row 1 .*row 3 "),
    # −inf is also what factor-free methods are grouped under internally: it must never pass as a factor.
    "a negative infinite factor": ("factor", [-INF, 2.0, -INF, 2.0], r"infinite steering factors: row 0 "),
    "NaN among real factors": ("factor", [1.0, np.nan, 1.0, np.nan], r"NaN in rows of methods that have .*row 1 "),
}


@pytest.mark.parametrize(("column", "values", "message"), REFUSED_STEERING.values(), ids=REFUSED_STEERING.keys())
def test_non_finite_or_fractional_steering_inputs_are_refused_with_their_rows(column, values, message) -> None:
    with pytest.raises(ValueError, match=message):
        score_generations(_judged(**{column: values}))


def test_nan_factor_of_a_factor_free_method_beside_a_method_with_factors_is_fine() -> None:
    free = _judged(method="PromptSteering", factor=np.nan, concept_rating=[1.0, 1.0, 2.0, 2.0])
    selected = select_factors(score_generations(pd.concat([_judged(), free], ignore_index=True)))
    by_method = selected.set_index("method")
    assert math.isnan(by_method.loc["PromptSteering", "factor"]) and by_method.loc["PromptSteering", "score"] == 2.0
    assert by_method.loc["M", "factor"] == 1.0


def test_no_judged_rows_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="judged generations: no rows"):
        score_generations(_judged().iloc[:0])


# ---- the evaluate modules and the CLI: the same rules at the user's door ----------------------------------------

def _steering_inputs(frame: pd.DataFrame) -> dict:
    return {"concept_ids": frame["concept_id"].tolist(), "prompt_ids": frame["prompt_id"].tolist(),
            "halves": frame["half"].tolist(), "factors": frame["factor"].tolist(),
            "concept_ratings": frame["concept_rating"].tolist(), "instruction_ratings": frame["instruction_rating"].tolist(),
            "fluency_ratings": frame["fluency_rating"].tolist()}


STEERING_MODULE = {
    "empty": (_judged().iloc[:0], "no rows"),
    "fractional ratings": (_judged(concept_rating=[1.5, 2.0, 0.5, 2.0]), "outside the judge's ratings"),
    "NaN factors among real ones": (_judged(factor=[1.0, np.nan, 1.0, np.nan]), "NaN in rows of methods"),
    "all ratings unparsed": (_judged(concept_rating=np.nan), None),
}


@pytest.mark.parametrize(("frame", "message"), STEERING_MODULE.values(), ids=STEERING_MODULE.keys())
def test_steering_module_refuses_or_counts(frame: pd.DataFrame, message: str | None) -> None:
    module = evaluate.load(str(METRICS_DIR / "steering"))
    if message is not None:
        with pytest.raises(ValueError, match=message):
            module.compute(**_steering_inputs(frame), n_resamples=10)
        return
    results = module.compute(**_steering_inputs(frame), n_resamples=10)
    assert math.isnan(results["score"])
    assert (results["n_undefined"], results["n_parse_failures"], results["n_generations"]) == (1, 4, 4)


# scores (None: no score), categories, and the AUROC expected or the message of the refusal
DETECTION_MODULE = {
    "empty": ([], [], "no rows"),
    "+inf positive": ([INF, 0.8, 0.5, 0.1], ["positive", "positive", "negative", "negative"], 1.0),
    "all scores missing": ([None, None], ["positive", "negative"], None),
}


@pytest.mark.parametrize(("scores", "categories", "expected"), DETECTION_MODULE.values(), ids=DETECTION_MODULE.keys())
def test_detection_module_refuses_ranks_or_counts(scores, categories, expected) -> None:
    module = evaluate.load(str(METRICS_DIR / "concept_detection"))
    inputs = {"scores": scores, "categories": categories, "concept_ids": [0] * len(scores), "n_resamples": 10}
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            module.compute(**inputs)
        return
    results = module.compute(**inputs)
    if expected is None:
        assert math.isnan(results["auroc"]) and (results["n_undefined"], results["n_unscored"]) == (1, 2)
    else:
        assert results["auroc"] == expected and results["per_concept_auroc"] == {0: expected}


def test_eval_detect_ranks_an_overflow_and_eval_steering_names_a_fractional_rating(tmp_path: Path) -> None:
    latent = tmp_path / "latent.parquet"
    _detection_rows([INF, 0.8, 0.4], [0.5, 0.1, 0.2]).to_parquet(latent)
    result = CliRunner().invoke(app, ["eval", "detect", str(latent), "--json", "--resamples", "10"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["M"]["auroc_mean"] == pytest.approx(8 / 9)  # was 0.5
    judged = tmp_path / "judged.parquet"
    _judged(fluency_rating=[2.0, 2.0, 1.5, 2.0]).to_parquet(judged)
    result = CliRunner().invoke(app, ["eval", "steering", str(judged), "--json"])
    assert result.exit_code == 1 and "row 2 (method M, concept 0): 1.5" in result.output
    assert "Traceback" not in result.output
