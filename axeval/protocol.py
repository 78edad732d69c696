"""`run.protocol`: our protocol (AxBench's, with its bugs fixed) or AxBench's reference behaviour.

Every difference from the reference code is a row of docs/protocol.md, with a column saying whether
`protocol: reference` restores it. Where restoring the reference's behaviour is cheap, `protocol: reference`
does it, so that a reproduction study can report both numbers:

- the judge asks once per rating: no re-ask after an answer that cannot be parsed or fails its schema, and
  such an answer scores 0 (ours: re-asked, then excluded from the score and counted);
- every token activation of a residual detector is rounded to 3 decimals before max-pooling, as AxBench's
  `predict_latent` (`round(x, 3)`) did: scores, argmax tokens (first of equal rounded maxima) and calibration;
- prompt detection's answer without a rating scores −1, below every rated text (ours: no score, excluded from
  that concept's metrics and counted);
- a concept whose max activation is ≤ 0 steers with magnitude factor × 50 (ours: the median of the positive
  maxima of its dictionary);
- the linear probe steps every micro-batch, ignoring its declared gradient accumulation (288 steps instead
  of 72 at the paper's sizes).

The switch governs these settings: an explicit setting that contradicts it (e.g. `gradient_accumulation_steps: 4`
for the probe, or `judge.parse_retries: 2`) is refused, not silently overridden (`method_settings`,
`check_judge_settings`; a run config refuses it at load).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROTOCOLS = ("fixed", "reference")
FIXED, REFERENCE = PROTOCOLS

# Method settings AxBench effectively ran with, where its code ignored its own config.
# IG / IxG train the Probe's head; the reference's IG head loop also stepped the optimiser every batch.
REFERENCE_METHOD_SETTINGS: dict[str, dict[str, Any]] = {name: {"gradient_accumulation_steps": 1}
                                                        for name in ("probe", "ig", "ixg")}
# Judge settings of the reference: one ask per rating (its judge parsed free text once, a failure was 0).
REFERENCE_JUDGE_SETTINGS: dict[str, Any] = {"parse_retries": 0}
REFERENCE_CALIBRATION_FALLBACK = 50.0
# AxBench's predict_latent rounds every token activation with round(x, 3) before taking the max.
REFERENCE_SCORE_DECIMALS = 3
# AxBench's PromptDetection gave an answer it could not parse the score -1.
REFERENCE_UNRATED_SCORE = -1.0


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"run.protocol={protocol!r} is unknown; use 'fixed' (AxBench's protocol with its bugs fixed, "
                         "the default) or 'reference' (AxBench's own behaviour where it differs; see docs/protocol.md)")
    return protocol


def _contradictions(where: str, governed: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """Refuse a given setting that the reference switch sets to another value (ValueError: the caller names the file)."""
    for key, value in governed.items():
        if key in given and given[key] != value:
            raise ValueError(
                f"{where}.{key}={given[key]!r} contradicts run.protocol=reference, which runs with {key}={value!r} "
                "as AxBench's code did; remove the setting, or use run.protocol=fixed to keep it (docs/protocol.md).")


def method_settings(protocol: str, method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` with the reference's effective values filled in under `reference`; an explicit setting that
    contradicts them raises ValueError (the switch governs them)."""
    if protocol != REFERENCE:
        return dict(settings)
    governed = REFERENCE_METHOD_SETTINGS.get(method, {})
    _contradictions(f"methods.settings.{method}", governed, settings)
    return {**settings, **governed}


def check_judge_settings(protocol: str, given: Mapping[str, Any]) -> None:
    """Refuse explicitly given judge settings that `reference` governs (its judge asks once)."""
    if protocol == REFERENCE:
        _contradictions("judge", REFERENCE_JUDGE_SETTINGS, given)


def judge_asks_once(protocol: str) -> bool:
    """One request per rating: no judge re-ask, no schema re-ask by the LLM client (a failure then scores 0)."""
    return protocol == REFERENCE


def calibration_fallback(protocol: str) -> float | None:
    """The constant magnitude for concepts that never fire (None: our median rule)."""
    return REFERENCE_CALIBRATION_FALLBACK if protocol == REFERENCE else None


def latent_score_decimals(protocol: str) -> int | None:
    """Decimals every token activation is rounded to before max-pooling (None: not rounded)."""
    return REFERENCE_SCORE_DECIMALS if protocol == REFERENCE else None


def unrated_detection_score(protocol: str) -> float | None:
    """The detection score of a target-model answer without a rating (None: left NaN, excluded and counted)."""
    return REFERENCE_UNRATED_SCORE if protocol == REFERENCE else None


def parse_failures_score_zero(protocol: str) -> bool:
    return protocol == REFERENCE
