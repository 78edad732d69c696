"""Steering score: harmonic mean of the judge's three ratings, factor selection, winrate, suppression.

Input: judged generations, one row each: `method, concept_id, prompt_id, half` ("selection" /
"heldout"), `factor` (NaN or a single value for factor-free methods) and the three 0–2 ratings
`concept_rating, instruction_rating, fluency_rating` (NaN where the judge's answer could not be parsed).

The rules (AxBench §5.3–5.4): a generation scores the harmonic mean of its three ratings, 0 when any is
0; per concept and method the factor with the best mean score over the selection prompts is chosen and
the held-out prompts' mean score at that factor is the concept's score; the leaderboard number is the
mean over concepts. Unlike AxBench, a generation with an unparsed rating is excluded and counted — a
parse failure is not a 0.

>>> harmonic_mean(2, 2, 1), harmonic_mean(2, 0, 2), harmonic_mean(2, 2, 2, suppression=True)
(1.5, 0.0, 0.0)
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from axdata.schema import HALVES
from axeval.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_ci

logger = logging.getLogger(__name__)

SELECTION, HELDOUT = HALVES
RATING_COLUMNS = ("concept_rating", "instruction_rating", "fluency_rating")
# Judge-free scores carried next to the judge's when the generations have them: the lexical concept score
# (axeval.lexical) and the generation's perplexity under the unsteered model (axmethods.inference.perplexity).
# `rule_score`: a rule concept's checker score in [0, 1] (axeval.rules), NaN for other concepts.
EXTRA_SCORES = ("lexical_score", "perplexity", "rule_score")
REQUIRED_COLUMNS = ("method", "concept_id", "prompt_id", "half", "factor", *RATING_COLUMNS)
MAX_RATING = 2.0
TIE_TOLERANCE = 1e-6
# Factor-free methods may carry NaN as their one factor; NaN never equals itself, so group on a sentinel.
_NO_FACTOR = -np.inf


def harmonic_mean(concept: float, instruction: float, fluency: float, suppression: bool = False) -> float:
    """Harmonic mean of three 0–2 ratings, 0 if any is 0; with `suppression` the concept term is 2 − concept."""
    return float(_harmonic_mean(np.array([concept]), np.array([instruction]), np.array([fluency]), suppression)[0])


def _harmonic_mean(concept: np.ndarray, instruction: np.ndarray, fluency: np.ndarray, suppression: bool) -> np.ndarray:
    concept_term = MAX_RATING - concept if suppression else concept
    terms = np.stack([concept_term, instruction, fluency]).astype(float)
    with np.errstate(divide="ignore"):
        mean = 3.0 / np.sum(1.0 / terms, axis=0)
    # 1/0 = inf makes the mean 0 already; this keeps it exact and NaN (a missing rating) stays NaN.
    return np.where(np.isnan(terms).any(axis=0), np.nan, np.where((terms == 0).any(axis=0), 0.0, mean))


def _row_names(rows: pd.DataFrame, column: str, limit: int = 5) -> str:
    """`row R (method M, concept C): value, …` for the first `limit` rows (R: the row's index in the input)."""
    named = [f"row {index} (method {method}, concept {concept_id}): {value!r}" for index, method, concept_id, value
             in zip(rows.index[:limit], rows["method"][:limit], rows["concept_id"][:limit], rows[column][:limit])]
    return "; ".join(named) + (f"; and {len(rows) - limit} more" if len(rows) > limit else "")


def _numbers(judged: pd.DataFrame, column: str, source: str) -> np.ndarray:
    """The column as floats (null → NaN), or ValueError naming the rows that hold something else."""
    values = pd.to_numeric(judged[column], errors="coerce")
    text = values.isna() & judged[column].notna()
    if text.any():
        raise ValueError(f"{source}: column {column!r} must hold numbers; {_row_names(judged[text], column)}.")
    return values.to_numpy(dtype=float, na_value=np.nan)


def check_judged(judged: pd.DataFrame, source: str = "judged generations") -> None:
    """Raise ValueError naming missing columns, an empty input, unknown halves, ratings other than 0, 1, 2 (NaN:
    unparsed) and factors that are not finite numbers (NaN only for every row of a factor-free method)."""
    missing = [column for column in REQUIRED_COLUMNS if column not in judged.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; run `axbench eval judge` on the steering generations "
            "first (it adds the three ratings)."
        )
    if judged.empty:
        raise ValueError(f"{source}: no rows, so there is nothing to score; pass the judged steering generations.")
    halves = sorted(set(judged["half"].dropna().unique()) - set(HALVES))
    if halves or judged["half"].isna().any():
        raise ValueError(f"{source}: column 'half' must hold only {list(HALVES)}; found {halves or 'nulls'}.")
    for column in RATING_COLUMNS:
        values = _numbers(judged, column, source)
        # The judge rates 0, 1 or 2: a fraction or an infinity is not a rating and must not be averaged in.
        bad = ~np.isnan(values) & ~np.isin(values, (0.0, 1.0, MAX_RATING))
        if bad.any():
            raise ValueError(f"{source}: column {column!r} holds values outside the judge's ratings (0, 1 or 2; "
                             f"NaN where the answer did not parse): {_row_names(judged[bad], column)}.")
    factors = _numbers(judged, "factor", source)
    infinite = np.isinf(factors)
    if infinite.any():
        raise ValueError(f"{source}: column 'factor' holds infinite steering factors: "
                         f"{_row_names(judged[infinite], 'factor')}; steer with finite factors.")
    # NaN marks a factor-free method; within a method with factors it would be scored as a factor of its own.
    nan = pd.Series(np.isnan(factors), index=judged.index)
    mixed = nan & (~nan).groupby(judged["method"]).transform("any")
    if mixed.any():
        raise ValueError(f"{source}: column 'factor' is NaN in rows of methods that have steering factors: "
                         f"{_row_names(judged[mixed], 'factor')}; NaN is only for methods without a factor (every "
                         "row NaN). Fill in the factor those generations were steered with, or drop the rows.")


def score_generations(judged: pd.DataFrame, suppression: bool = False,
                      parse_failures_as_zero: bool = False) -> pd.DataFrame:
    """The judged rows plus `score` (the harmonic mean) and `excluded` (some rating failed to parse).

    `parse_failures_as_zero` restores AxBench's behaviour (`protocol: reference`): an unparsed rating counts
    as 0, so the generation scores 0 instead of being excluded. Rows without a `parse_status` column count
    every missing rating as a parse failure.
    """
    check_judged(judged)
    scored = judged.copy()
    if parse_failures_as_zero:
        failed = scored["parse_status"].eq("parse_failure") if "parse_status" in scored else \
            pd.Series(True, index=scored.index)
        for column in RATING_COLUMNS:
            scored[column] = scored[column].where(~(failed & scored[column].isna()), 0.0)
    ratings = [scored[column].to_numpy(float) for column in RATING_COLUMNS]
    scored["score"] = _harmonic_mean(*ratings, suppression=suppression)
    scored["excluded"] = np.isnan(scored["score"].to_numpy())
    return scored


def _mean_by_factor(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.groupby("_factor")[["score", *RATING_COLUMNS]].mean().sort_index()


def _one_concept(group: pd.DataFrame, n_factors: int) -> dict[str, float | int]:
    valid = group[~group["excluded"]]
    selection, heldout = valid[valid["half"] == SELECTION], valid[valid["half"] == HELDOUT]
    counts = {
        "n_selection": int((group["half"] == SELECTION).sum()),
        "n_heldout": int((group["half"] == HELDOUT).sum()),
        "n_excluded": int(group["excluded"].sum()),
    }
    undefined = counts | {"factor": np.nan, "score": np.nan} | dict.fromkeys(RATING_COLUMNS, np.nan)
    if n_factors == 1:
        best = group["_factor"].iloc[0]
    elif selection.empty:
        return undefined
    else:
        # idxmax takes the first maximum: ties go to the smallest factor, as AxBench's argmax over sorted factors.
        best = _mean_by_factor(selection)["score"].idxmax()
    at_best = heldout[heldout["_factor"] == best]
    if at_best.empty:
        return undefined | {"factor": best}
    extra = [column for column in EXTRA_SCORES if column in group]
    return counts | {
        "factor": best,
        "score": float(at_best["score"].mean()),
        **{column: float(at_best[column].mean()) for column in (*RATING_COLUMNS, *extra)},
        "n_scored": len(at_best),
    }


def select_factors(scored: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, concept): the factor chosen on the selection half and the held-out scores there.

    A method with a single factor value (factor-free methods, NaN allowed) needs no selection. A concept
    whose selection or held-out rows all failed to parse gets a NaN score, counted by `summarize_steering`.
    """
    if "score" not in scored.columns:
        raise ValueError("select_factors: rows have no 'score'; pass the output of score_generations().")
    work = scored.assign(_factor=scored["factor"].astype(float).fillna(_NO_FACTOR))
    records = []
    for method, rows in work.groupby("method", sort=True):
        n_factors = rows["_factor"].nunique()
        if n_factors > 1 and not (rows["half"] == SELECTION).any():
            raise ValueError(
                f"judged generations: method {method!r} has {n_factors} factors but no 'selection' rows, so no "
                "factor can be chosen; generate both halves of the steering prompts."
            )
        for concept_id, group in rows.groupby("concept_id", sort=True):
            records.append({"method": method, "concept_id": int(concept_id), **_one_concept(group, n_factors)})
    table = pd.DataFrame.from_records(records)
    table["factor"] = table["factor"].replace(_NO_FACTOR, np.nan)
    for method, group in table[table["score"].isna()].groupby("method"):
        logger.warning(
            "%s: %d concept(s) have no scored held-out generation at their chosen factor (judge parse failures "
            "or missing rows) and are left out of the mean: %s", method, len(group), group["concept_id"].tolist()[:10])
    return table


def summarize_steering(
    selected: pd.DataFrame,
    scored: pd.DataFrame,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """One row per method: mean held-out score with its bootstrap CI over concepts, the sub-scores, and the
    number and share of generations excluded for judge parse failures."""
    records = []
    for method, group in selected.groupby("method", sort=True):
        rows = scored[scored["method"] == method]
        defined = group.dropna(subset=["score"])
        records.append({
            "method": method,
            **bootstrap_ci(defined["score"].to_numpy(float), n_resamples, confidence, seed).as_dict("score_"),
            **{column: float(defined[column].mean()) for column in RATING_COLUMNS},
            "n_concepts": len(group),
            "n_undefined": len(group) - len(defined),
            "n_generations": len(rows),
            "n_parse_failures": int(rows["excluded"].sum()),
            "parse_failure_rate": float(rows["excluded"].mean()) if len(rows) else float("nan"),
            "mean_factor": float(defined["factor"].mean()),
            **{key: value for column in EXTRA_SCORES if column in defined
               for key, value in bootstrap_ci(defined[column].dropna().to_numpy(float), n_resamples, confidence,
                                              seed).as_dict(f"{column}_").items()},
        })
    return pd.DataFrame.from_records(records)


def winrate(selected: pd.DataFrame, baseline: str, tie_tolerance: float = TIE_TOLERANCE) -> pd.DataFrame:
    """Per method, the share of concepts where it beats `baseline` (ties count ½), over shared concepts.

    Paper Table 3 compares per-concept steering scores against SAE.
    """
    if baseline not in set(selected["method"]):
        raise ValueError(
            f"winrate: baseline method {baseline!r} is not among the methods {sorted(set(selected['method']))}; "
            "pick one of them."
        )
    # dropna=False keeps a method whose every score is undefined (e.g. all its ratings excluded): its winrate is NaN.
    pivot = selected.pivot_table(index="concept_id", columns="method", values="score", aggfunc="first", dropna=False)
    if pivot[baseline].isna().all():
        logger.warning("winrate: the baseline %r has no defined steering score on any concept (its ratings were all "
                       "excluded or undefined); every winrate is undefined", baseline)
    records = []
    for method in pivot.columns:
        delta = (pivot[method] - pivot[baseline]).dropna().to_numpy()
        wins, ties = int(np.sum(delta > tie_tolerance)), int(np.sum(np.abs(delta) <= tie_tolerance))
        n = len(delta)
        records.append({
            "method": method, "baseline": baseline, "n_concepts": n, "wins": wins, "ties": ties,
            "losses": n - wins - ties, "winrate": (wins + 0.5 * ties) / n if n else float("nan"),
        })
    return pd.DataFrame.from_records(records)


def factor_curves(scored: pd.DataFrame) -> pd.DataFrame:
    """Mean score per (method, half, factor): the mean over concepts of each concept's mean over prompts."""
    valid = scored[~scored["excluded"]].assign(_factor=scored["factor"].astype(float).fillna(_NO_FACTOR))
    columns = ["score", *RATING_COLUMNS, *(column for column in EXTRA_SCORES if column in valid)]
    per_concept = valid.groupby(["method", "half", "_factor", "concept_id"])[columns].mean()
    curves = per_concept.groupby(level=["method", "half", "_factor"]).mean().reset_index()
    curves = curves.rename(columns={"_factor": "factor"})
    curves["factor"] = curves["factor"].replace(_NO_FACTOR, np.nan)
    return curves


ATTACK_KEYS = ("attack", "attack_n")
NO_ATTACK = "none"


def attack_scores(scored: pd.DataFrame) -> pd.DataFrame:
    """Suppression under attack, per (method, attack, attack_n, concept): the held-out rows of each attack at the
    factor chosen for that (method, concept) on the *un-attacked* selection half (the reference fixes the attack's
    factor from the plain suppression run), with their mean score, ratings and judge-free scores.

    `scored`: `score_generations(..., suppression=True)` of suppression generations with columns `attack`
    ("none" for the un-attacked rows) and `attack_n` (the many-shot n, NaN otherwise).
    """
    missing = [column for column in ATTACK_KEYS if column not in scored.columns]
    if missing or not scored["attack"].eq(NO_ATTACK).any():
        raise ValueError(f"attack_scores: the rows need columns {list(ATTACK_KEYS)} and un-attacked rows (attack "
                         f"{NO_ATTACK!r}) to choose each factor on; missing: {missing or 'un-attacked rows'}.")
    chosen = select_factors(scored[scored["attack"] == NO_ATTACK])[["method", "concept_id", "factor"]]
    chosen = chosen.assign(_factor=chosen["factor"].astype(float).fillna(_NO_FACTOR)).drop(columns="factor")
    rows = scored.assign(_factor=scored["factor"].astype(float).fillna(_NO_FACTOR))
    at = rows.merge(chosen, on=["method", "concept_id", "_factor"])
    at = at[(at["half"] == HELDOUT) & ~at["excluded"]]
    columns = ["score", *RATING_COLUMNS, *(column for column in EXTRA_SCORES if column in at)]
    per_concept = at.groupby(["method", *ATTACK_KEYS, "concept_id"], dropna=False)[columns].mean().reset_index()
    return per_concept.rename(columns={"_factor": "factor"})


def summarize_attacks(per_concept: pd.DataFrame, n_resamples: int = DEFAULT_RESAMPLES,
                      confidence: float = DEFAULT_CONFIDENCE, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """One row per (method, attack, attack_n): the mean suppression score over concepts with its bootstrap CI, and
    the judge-free scores' means."""
    records = []
    for (method, attack, strength), group in per_concept.groupby(["method", *ATTACK_KEYS], dropna=False, sort=True):
        defined = group.dropna(subset=["score"])
        records.append({
            "method": method, "attack": attack, "attack_n": strength,
            **bootstrap_ci(defined["score"].to_numpy(float), n_resamples, confidence, seed).as_dict("score_"),
            **{f"{column}_mean": float(group[column].mean()) for column in EXTRA_SCORES if column in group},
        })
    return pd.DataFrame.from_records(records)
