"""Science check: a short RePS run on SmolLM2-135M-Instruct with Concept10 preference pairs steers.

The measurement is `benchmarks/reps_concept10.py`'s `measure()` (docs/benchmarks.md, record reps_concept10):
the first 36 training positives of concept 9 ("references to different worlds, realities, or fantastical
settings within narratives", prod_2b_l20_v1) win over SmolLM2's own greedy answers (32 tokens); RePS rank-1
vector at layer 10, 2 epochs of 6 steps; greedy answers (40 tokens) to 12 held-out instructions of our shipped
pool, scored by the share (%) of their words among the concept's 30 signature words. The factor is picked on
the first 6 instructions and reported on the other 6, as AxBench picks factors on one half and scores the other.
The check fails when the picked factor's held-out score is not clearly above the unsteered one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "axbench" / "concept10" / "prod_2b_l20_v1"


@pytest.mark.slow
@pytest.mark.skipif(not SOURCE.is_dir(), reason=f"AxBench Concept10 data not found at {SOURCE} (shared data "
                                                 "checkout absent); the science check needs the real data.")
def test_reps_steers_smollm2_towards_a_concept10_concept(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from reps_concept10 import measure

    measured = measure()
    held_out, baseline, best, margins = measured["held_out"], measured["unsteered"], measured["factor"], \
        measured["margins"]
    print(f"\nRePS on SmolLM2 L{measured['layer']}, concept {measured['concept_id']}, {measured['pairs']} pairs: "
          f"pairs {measured['pairs_seconds']:.0f} s, train {measured['train_seconds']:.0f} s ({measured['steps']} "
          f"steps); orig_add margin {margins[0]:.3f} → {margins[-1]:.3f}; selection scores {measured['selection']}; "
          f"held-out concept score at factor {best}: {held_out:.2f} % vs unsteered {baseline:.2f} %\n"
          f"example: {measured['example'][:160]!r}", file=sys.stderr)
    assert held_out >= baseline + 3.0 and held_out >= 3 * max(baseline, 0.5)
