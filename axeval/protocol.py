"""`run.protocol`: our protocol (AxBench's, with its bugs fixed) or AxBench's reference behaviour.

Every difference from the reference code is a row of docs/protocol.md. Where restoring the reference's
behaviour is cheap, `protocol: reference` does it, so that a reproduction study can report both numbers:

- a judge answer that cannot be parsed scores 0 (ours: excluded from the score and counted);
- a concept whose max activation is ≤ 0 steers with magnitude factor × 50 (ours: the median of the positive
  maxima of its dictionary);
- the linear probe steps every micro-batch, ignoring its declared gradient accumulation (288 steps instead
  of 72 at the paper's sizes).
"""

from __future__ import annotations

from typing import Any

PROTOCOLS = ("fixed", "reference")
FIXED, REFERENCE = PROTOCOLS

# Method settings AxBench effectively ran with, where its code ignored its own config.
REFERENCE_METHOD_SETTINGS: dict[str, dict[str, Any]] = {"probe": {"gradient_accumulation_steps": 1}}
REFERENCE_CALIBRATION_FALLBACK = 50.0


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"run.protocol={protocol!r} is unknown; use 'fixed' (AxBench's protocol with its bugs fixed, "
                         "the default) or 'reference' (AxBench's own behaviour where it differs; see docs/protocol.md)")
    return protocol


def method_settings(protocol: str, method: str, settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` with the reference's effective values filled in under `reference` (explicit settings win)."""
    if protocol != REFERENCE:
        return dict(settings)
    return {**REFERENCE_METHOD_SETTINGS.get(method, {}), **settings}


def calibration_fallback(protocol: str) -> float | None:
    """The constant magnitude for concepts that never fire (None: our median rule)."""
    return REFERENCE_CALIBRATION_FALLBACK if protocol == REFERENCE else None


def parse_failures_score_zero(protocol: str) -> bool:
    return protocol == REFERENCE
