"""Confidence intervals over concepts: the seeded percentile bootstrap that the leaderboard reports.

AxBench's notebooks resample concepts (not rows) 1,000 times and take percentiles; we do the same with a
seeded generator, so the same scores and seed always give the same interval.

>>> ci = bootstrap_ci([0.9, 0.8, 0.95, 0.7, 0.85], n_resamples=1000, seed=0)
>>> round(ci.mean, 3), ci.low <= ci.mean <= ci.high, ci.n
(0.84, True, 5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0


@dataclass(frozen=True)
class ConfidenceInterval:
    """The mean of `n` values and its percentile-bootstrap interval at `confidence`."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = DEFAULT_CONFIDENCE

    def as_dict(self, prefix: str = "") -> dict[str, float | int]:
        return {f"{prefix}mean": self.mean, f"{prefix}ci_low": self.low, f"{prefix}ci_high": self.high,
                f"{prefix}n": self.n}

    def format(self, digits: int = 3) -> str:
        """`0.842 [0.801, 0.880]`, the form used in tables."""
        if np.isnan(self.mean):
            return "–"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of the mean of `values` (NaN values are an error, not skipped).

    One value gives a zero-width interval; no value gives NaN everywhere.
    """
    data = np.asarray(values, dtype=float)
    if data.ndim != 1:
        raise ValueError(f"bootstrap_ci: values must be one-dimensional, got shape {data.shape}.")
    if np.isnan(data).any():
        raise ValueError(
            "bootstrap_ci: values contain NaN; drop the undefined entries first and report how many were "
            "dropped (an undefined score is not a score)."
        )
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap_ci: confidence={confidence!r} must lie strictly between 0 and 1.")
    if n_resamples < 1:
        raise ValueError(f"bootstrap_ci: n_resamples={n_resamples!r} must be at least 1.")
    if data.size == 0:
        nan = float("nan")
        return ConfidenceInterval(nan, nan, nan, 0, confidence)
    mean = float(data.mean())
    if data.size == 1:
        return ConfidenceInterval(mean, mean, mean, 1, confidence)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, data.size, size=(n_resamples, data.size))
    means = data[indices].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return ConfidenceInterval(mean, float(low), float(high), int(data.size), confidence)


def by_method(frame: Any, prefix: str = "") -> dict[str, dict[str, Any]]:
    """A per-method summary frame as {method: {prefix + column: JSON-ready value}} (`--json` outputs, leaderboard)."""
    return {record["method"]: {f"{prefix}{key}": json_value(value) for key, value in record.items() if key != "method"}
            for record in frame.to_dict("records")}


def json_value(value: Any) -> Any:
    """A JSON-ready scalar: numpy → Python, NaN → None (JSON has no NaN: an undefined metric is null)."""
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value
