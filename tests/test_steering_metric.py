"""Steering aggregation rules with hand-computed expected values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from axeval.steering import (
    factor_curves,
    harmonic_mean,
    score_generations,
    select_factors,
    summarize_steering,
    winrate,
)


def _judged(rows: list[tuple]) -> pd.DataFrame:
    """rows: (method, concept_id, prompt_id, half, factor, concept, instruction, fluency)."""
    return pd.DataFrame(rows, columns=["method", "concept_id", "prompt_id", "half", "factor",
                                       "concept_rating", "instruction_rating", "fluency_rating"])


def test_harmonic_mean_values_and_zero_rule():
    assert harmonic_mean(2, 2, 2) == 2.0
    assert harmonic_mean(1, 2, 2) == pytest.approx(1.5)  # 3 / (1 + 1/2 + 1/2)
    assert harmonic_mean(1, 1, 2) == pytest.approx(1.2)  # 3 / (1 + 1 + 1/2)
    for zeroed in ((0, 2, 2), (2, 0, 2), (2, 2, 0), (0, 0, 0)):
        assert harmonic_mean(*zeroed) == 0.0
    assert np.isnan(harmonic_mean(np.nan, 2, 2))


def test_suppression_inverts_the_concept_term():
    assert harmonic_mean(0, 2, 2, suppression=True) == 2.0  # concept kept out entirely
    assert harmonic_mean(2, 2, 2, suppression=True) == 0.0
    assert harmonic_mean(1, 2, 2, suppression=True) == pytest.approx(1.5)
    judged = _judged([("M", 0, 0, "selection", 1.0, 0, 2, 2), ("M", 0, 1, "heldout", 1.0, 2, 2, 2)])
    assert score_generations(judged, suppression=True)["score"].tolist() == [2.0, 0.0]


# Concept 0, factors 0.5 / 1.0 / 2.0, two prompts per half. Selection means: 0.5 → (1.2+1.5)/2 = 1.35,
# 1.0 → (2+1.5)/2 = 1.75 (best), 2.0 → (0+2)/2 = 1.0. Held-out at 1.0: (1.5 + 1.2)/2 = 1.35, although
# held-out at 2.0 would be higher (2.0): selection, not the held-out half, decides.
TABLE = [
    ("M", 0, 0, "selection", 0.5, 1, 1, 2), ("M", 0, 1, "selection", 0.5, 1, 2, 2),
    ("M", 0, 0, "selection", 1.0, 2, 2, 2), ("M", 0, 1, "selection", 1.0, 1, 2, 2),
    ("M", 0, 0, "selection", 2.0, 2, 0, 2), ("M", 0, 1, "selection", 2.0, 2, 2, 2),
    ("M", 0, 2, "heldout", 0.5, 0, 2, 2), ("M", 0, 3, "heldout", 0.5, 0, 2, 2),
    ("M", 0, 2, "heldout", 1.0, 1, 2, 2), ("M", 0, 3, "heldout", 1.0, 1, 1, 2),
    ("M", 0, 2, "heldout", 2.0, 2, 2, 2), ("M", 0, 3, "heldout", 2.0, 2, 2, 2),
    # Concept 1: selection ties at 0.5 and 1.0 (both 2.0) → the smaller factor, 0.5; held-out there: 1.0.
    ("M", 1, 0, "selection", 0.5, 2, 2, 2), ("M", 1, 0, "selection", 1.0, 2, 2, 2),
    ("M", 1, 0, "selection", 2.0, 0, 2, 2),
    ("M", 1, 1, "heldout", 0.5, 1, 1, 1), ("M", 1, 1, "heldout", 1.0, 2, 2, 2),
    ("M", 1, 1, "heldout", 2.0, 2, 2, 2),
]


def test_factor_selection_on_hand_made_table():
    scored = score_generations(_judged(TABLE))
    selected = select_factors(scored).set_index("concept_id")
    assert selected.loc[0, "factor"] == 1.0
    assert selected.loc[0, "score"] == pytest.approx(1.35)
    assert selected.loc[0, "concept_rating"] == pytest.approx(1.0)
    assert selected.loc[0, "instruction_rating"] == pytest.approx(1.5)
    assert selected.loc[1, "factor"] == 0.5
    assert selected.loc[1, "score"] == pytest.approx(1.0)
    summary = summarize_steering(select_factors(scored), scored).iloc[0]
    assert summary["score_mean"] == pytest.approx((1.35 + 1.0) / 2)
    assert (summary["n_concepts"], summary["n_undefined"], summary["n_parse_failures"]) == (2, 0, 0)


def test_factor_free_method_with_nan_factor_needs_no_selection():
    judged = _judged([
        ("Prompt", 0, 0, "selection", np.nan, 2, 2, 2),
        ("Prompt", 0, 1, "heldout", np.nan, 1, 2, 2),
        ("Prompt", 0, 2, "heldout", np.nan, 2, 2, 2),
        ("Prompt", 1, 1, "heldout", np.nan, 2, 2, 2),  # no selection rows at all: still scored
    ])
    selected = select_factors(score_generations(judged)).set_index("concept_id")
    assert selected.loc[0, "score"] == pytest.approx((1.5 + 2.0) / 2)
    assert np.isnan(selected.loc[0, "factor"])
    assert selected.loc[1, "score"] == 2.0


def test_parse_failures_are_excluded_and_counted_never_zero():
    judged = _judged([
        ("M", 0, 0, "selection", 1.0, 2, 2, 2),
        ("M", 0, 1, "heldout", 1.0, 2, 2, 2),
        ("M", 0, 2, "heldout", 1.0, np.nan, 2, 2),  # a parse failure: would be 0 in AxBench
        ("M", 1, 0, "selection", 1.0, 2, 2, 2),
        ("M", 1, 1, "heldout", 1.0, 2, np.nan, 2),  # the concept's only held-out row failed
    ])
    scored = score_generations(judged)
    assert scored["excluded"].tolist() == [False, False, True, False, True]
    selected = select_factors(scored)
    summary = summarize_steering(selected, scored).iloc[0]
    assert summary["score_mean"] == 2.0  # not (2 + 0) / 2
    assert (summary["n_parse_failures"], summary["n_generations"]) == (2, 5)
    assert summary["parse_failure_rate"] == pytest.approx(0.4)
    assert (summary["n_concepts"], summary["n_undefined"], summary["score_n"]) == (2, 1, 1)


def test_multi_factor_method_without_selection_rows_is_an_error():
    judged = _judged([("M", 0, 0, "heldout", 1.0, 2, 2, 2), ("M", 0, 0, "heldout", 2.0, 2, 2, 2)])
    with pytest.raises(ValueError, match="no 'selection' rows"):
        select_factors(score_generations(judged))


def test_ratings_out_of_range_or_missing_columns_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        score_generations(_judged([("M", 0, 0, "heldout", 1.0, 3, 2, 2)]))
    with pytest.raises(ValueError, match="missing column"):
        score_generations(_judged([("M", 0, 0, "heldout", 1.0, 2, 2, 2)]).drop(columns="fluency_rating"))


def test_winrate_counts_ties_as_half():
    selected = pd.DataFrame({
        "method": ["A"] * 4 + ["SAE"] * 4,
        "concept_id": [0, 1, 2, 3] * 2,
        "score": [1.0, 0.5, 0.7, np.nan, 0.5, 0.5, 0.9, 0.1],
    })
    rates = winrate(selected, "SAE").set_index("method")
    # A vs SAE on concepts 0–2 (3 is undefined for A): win, tie, loss → (1 + 0.5) / 3
    assert rates.loc["A", "winrate"] == pytest.approx(0.5)
    assert (rates.loc["A", "wins"], rates.loc["A", "ties"], rates.loc["A", "losses"]) == (1, 1, 1)
    assert rates.loc["SAE", "winrate"] == 0.5  # against itself: all ties
    with pytest.raises(ValueError, match="baseline method 'Nope'"):
        winrate(selected, "Nope")
    # A baseline whose every score is undefined (all its ratings excluded): undefined winrates, not a crash.
    undefined = selected.assign(score=np.where(selected["method"] == "SAE", np.nan, selected["score"]))
    rates = winrate(undefined, "SAE").set_index("method")
    assert set(rates.index) == {"A", "SAE"} and rates["winrate"].isna().all() and (rates["n_concepts"] == 0).all()


def test_factor_curves_average_concepts_then_prompts():
    curves = factor_curves(score_generations(_judged(TABLE)))
    row = curves[(curves["half"] == "heldout") & (curves["factor"] == 2.0)].iloc[0]
    assert row["score"] == pytest.approx(2.0)
    row = curves[(curves["half"] == "selection") & (curves["factor"] == 1.0)].iloc[0]
    assert row["score"] == pytest.approx((1.75 + 2.0) / 2)
