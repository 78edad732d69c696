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
    "n_resamples", "max_seconds_per_rating", "low_rank_dimension", "rank",
})
# Coefficients, seeds, temperatures and indices: negative values make no sense.
NON_NEGATIVE = frozenset({
    "weight_decay", "l1_coefficient", "coeff_latent_l1_loss", "max_grad_norm", "seed", "temperature", "top_k",
    "layer", "warmup_ratio", "warmup_steps", "init_value", "parse_retries",
})


def check_numbers(values: Mapping[str, Any], where: str) -> None:
    """Raise InputError naming `where.key` for a non-finite number or one outside its field's range."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{where}.{key} = {value!r}: must be a finite number.")
        if key in POSITIVE and value <= 0:
            raise InputError(f"{where}.{key} = {value!r}: must be greater than 0.")
        if key in NON_NEGATIVE and value < 0:
            raise InputError(f"{where}.{key} = {value!r}: must be 0 or more.")


def check_dataclass_numbers(instance: Any, where: str | None = None) -> None:
    """`check_numbers` over a dataclass instance's fields."""
    check_numbers({f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)},
                  where or type(instance).__name__)
