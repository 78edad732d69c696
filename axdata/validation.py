"""Range checks of numeric settings, by field name, shared by every config (run sections, method configs).

A setting is checked where it is loaded, so a bad value stops a run before any work or spending, with a
message naming where it was set.

>>> check_numbers({"epochs": 3, "lr": 0.01, "weight_decay": 0.0}, "methods.settings.probe")
>>> check_numbers({"epochs": -1}, "methods.settings.probe")
Traceback (most recent call last):
...
axdata.errors.InputError: methods.settings.probe.epochs = -1: must be greater than 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from axdata.errors import InputError

# Counts, sizes, rates and lengths: zero or less can only be a mistake.
POSITIVE = frozenset({
    "epochs", "num_train_epochs", "batch_size", "per_device_train_batch_size", "gradient_accumulation_steps",
    "lr", "learning_rate", "max_length", "max_new_tokens", "max_tokens", "activation_batch_size",
    "concepts_per_chunk", "topk", "covariance_batch", "feature_batch", "latent_batch_size", "steering_batch_size",
    "n_resamples", "max_seconds_per_rating", "low_rank_dimension", "rank", "calibration_fallback",
    "max_concurrency", "concept_concurrency", "target_batch_size", "embedded_n_parallel", "embedded_n_ctx",
    "max_concepts",
})
# Coefficients, seeds, temperatures and indices: negative values make no sense.
NON_NEGATIVE = frozenset({
    "weight_decay", "l1_coefficient", "coeff_latent_l1_loss", "max_grad_norm", "seed", "temperature", "top_k",
    "layer", "warmup_ratio", "warmup_steps", "init_value", "parse_retries",
})


# Steering factor grids: at least one factor, each finite and within ±MAX_FACTOR. The largest grid in use is the
# RePS family's raw factors (up to 50); beyond a few hundred the steered residual only makes noise, and 1e30 makes
# inf in half precision.
FACTOR_GRIDS = frozenset({"factors", "training_factors", "inference_factors"})
MAX_FACTOR = 1000.0


def number_problem(key: str, value: Any) -> str | None:
    """What is wrong with setting `key` = `value` (non-finite, out of its range, an empty factor grid), or None."""
    if isinstance(value, (list, tuple)):
        numbers = [item for item in value if isinstance(item, (int, float)) and not isinstance(item, bool)]
        if any(not math.isfinite(item) for item in numbers):
            return "every number must be finite"
        if key in FACTOR_GRIDS and not value:
            return "give at least one factor; an empty grid steers nothing"
        if key in FACTOR_GRIDS and any(abs(item) > MAX_FACTOR for item in numbers):
            return f"every factor must be within ±{MAX_FACTOR:g}"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if key in POSITIVE and value <= 0:
        return "must be greater than 0"
    if key in NON_NEGATIVE and value < 0:
        return "must be 0 or more"
    return None


def check_numbers(values: Mapping[str, Any], where: str) -> None:
    """Raise InputError naming `where.key` for a non-finite number or one outside its field's range."""
    for key, value in values.items():
        problem = number_problem(key, value)
        if problem is not None:
            raise InputError(f"{where}.{key} = {value!r}: {problem}.")


def check_dataclass_numbers(instance: Any, where: str | None = None) -> None:
    """`check_numbers` over a dataclass instance's fields."""
    check_numbers({f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)},
                  where or type(instance).__name__)
