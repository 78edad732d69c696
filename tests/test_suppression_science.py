"""Science check: suppression on the real Concept10 data with SmolLM2-135M-Instruct, scored without a judge.

What `benchmarks/suppression_concept10.py` measured (docs/benchmarks.md, record suppression_concept10; 10 concepts
× 2 instructions, 24 greedy tokens, layer 10): the 135M model barely takes up a concept that the instruction merely
invites (lexical concept score 0.22 % unsteered), so suppression without an attack has nothing to remove and is not
asserted; a many-shot attack (4 examples that carry the concept) makes the unsteered model write it (2.72 %), and
DiffMean steering at −1 × the concept's calibration keeps it out (0.00 %). This test runs the same measurement on
the four concepts whose unsteered generations take the attack up (0, 6, 8, 9: 2.5–11.7 %; the other six stay at
0 % under attack, so suppression cannot show on them) — chosen by the unsteered model alone, not by DiffMean's
result. Both comparisons can fail: an attack that no longer attacks, or a suppression sign or factor gone wrong.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CONCEPTS = [0, 6, 8, 9]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "axbench" / "concept10" / "prod_2b_l20_v1"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"AxBench Concept10 data not found at {SHARED} (shared data "
                                                 "checkout absent); the science check needs the real data.")
def test_many_shot_attack_raises_the_concept_and_diffmean_keeps_it_out(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from suppression_concept10 import measure

    measured = measure(prompts=2, factors=[1.0], defences=[], many_shot=[4], overwrite=[], max_new_tokens=24,
                       concept_ids=CONCEPTS)
    table = measured["table"].set_index(["method", "variant"])["lexical_score"]
    print(f"\n{table.round(2).to_string()}\n{measured['generations']} generations in {measured['seconds']:.0f} s",
          file=sys.stderr)
    unsteered_attacked = table[("unsteered", "many-shot-4")]
    assert unsteered_attacked > table[("unsteered", "none")] + 1.0  # the attack puts the concept in
    assert table[("diffmean", "many-shot-4")] < unsteered_attacked / 2  # DiffMean at −1 keeps it out
