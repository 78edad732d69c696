"""The row building and scoring of `benchmarks/rules_smollm2.py` (no model: the generations are made up)."""

from __future__ import annotations

import pandas as pd
import pytest

from axdata.concepts import load_rule_concepts


@pytest.fixture()
def bench(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import rules_smollm2

    return rules_smollm2


def test_decided_by_budget_only_for_length_rules_the_budget_settles(bench) -> None:
    assert bench.decided_by_budget("min_words:300", 48)
    assert not bench.decided_by_budget("min_words:40", 48)
    assert bench.decided_by_budget("max_words:50", 48)
    assert bench.decided_by_budget("max_words:48", 48)
    assert not bench.decided_by_budget("max_words:20", 48)
    assert not bench.decided_by_budget("all_capital", 48)


def test_rows_use_the_fixed_rule_templates_and_pair_the_instructions(bench) -> None:
    rules = [r for r in load_rule_concepts() if r.checker][:2]
    steering, suppression = bench.build_rows(rules, ["Name a fruit.", "Say hi.", "Count to 3.", "Be brief."])
    assert len(steering) == len(suppression) == 8
    assert (steering["original_prompt"] == suppression["original_prompt"]).all()
    assert list(steering["half"][:4]) == ["selection", "selection", "heldout", "heldout"]
    first = suppression.iloc[0]
    assert first["blended_prompt"] == f"Name a fruit. In your answer, follow this rule: {rules[0].concept}"
    assert first["defence_prompt"].endswith(rules[0].concept) and "avoid" in first["defence_prompt"]
    assert rules[0].concept in steering.iloc[0]["steering_prompt"]


def test_score_tables_average_per_rule_and_leave_budget_decided_rules_out_of_the_means(bench) -> None:
    rules = {r.checker: r for r in load_rule_concepts() if r.checker}
    capital, long = rules["all_capital"], rules["min_words:300"]
    generations = pd.DataFrame([
        # (concept_id, mode, method, attack, rule_score)
        (capital.concept_id, "steering", "unsteered", "none", 0.0),
        (capital.concept_id, "steering", "unsteered", "none", 0.2),
        (capital.concept_id, "steering", "prompt-steering", "none", 1.0),
        (capital.concept_id, "suppression", "defence-prompt/system", "overwrite-postfix", 0.5),
        (long.concept_id, "steering", "unsteered", "none", 0.0),
        (long.concept_id, "steering", "prompt-steering", "none", 0.0),
        (long.concept_id, "suppression", "defence-prompt/system", "overwrite-postfix", 0.0),
    ], columns=["concept_id", "mode", "method", "attack", "rule_score"])
    rows, means = bench.score_tables(generations, [capital, long], 48)
    assert [row["checker"] for row in rows] == ["all_capital", "min_words:300"]
    assert rows[0]["steer: unsteered"] == pytest.approx(0.1)
    assert rows[0]["overwrite-postfix: system"] == 0.5
    assert rows[1]["budget-decided"] and not rows[0]["budget-decided"]
    by_variant = {m["variant"]: m for m in means}
    assert list(by_variant) == ["steer: unsteered", "steer: prompt-steering", "overwrite-postfix: system"]
    assert by_variant["steer: prompt-steering"] == {"variant": "steer: prompt-steering", "rules": 1,
                                                    "mean checker score": 1.0}
