"""`axbench run` with evaluation modes steering + suppression + attacks + rules on a tiny model.

The dataset is the session's tiny run's, plus hand-written suppression and attack_shots splits (the generated ones
are tested in tests/test_suppression_data.py), and concept 1 made a rule with a checker.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from fixtures_runs import write_run_config
from typer.testing import CliRunner

from axdata.builders import list_configs, read_concepts, read_split, write_concepts, write_split
from axdata.schema import table_from_frame
from axeval.cli import app
from axeval.modes import EvaluationSection, attacked_prompts

MODES = {"modes": ["steering", "suppression", "attacks", "rules"], "suppression_factors": [1.0, 4.0],
         "defences": ["prepend", "append"], "many_shot": [1, 2], "overwrite": ["prefix"]}


def _with_suppression_splits(source: Path, out: Path) -> Path:
    shutil.copytree(source, out)
    config = list_configs(out)[0]
    steering = read_split(out, config, "steering")
    concepts = read_concepts(out, config)
    suppression = steering[["concept_id", "input_concept", "input_id", "original_prompt", "half",
                            "template_hash", "generator_model", "sample_seed"]].assign(
        dataset_name="suppression",
        blended_prompt=steering["original_prompt"] + " Answer with " + steering["input_concept"] + " in mind.",
        defence_prompt="Never mention " + steering["input_concept"] + ".")
    shots = pd.DataFrame([{"concept_id": c.concept_id, "input_concept": c.concept, "shot_id": k,
                           "question": f"What is {k} plus {k}?", "answer": f"{2 * k}, like {c.concept}.",
                           "template_hash": None, "generator_model": "hand", "sample_seed": None}
                          for c in concepts for k in range(3)])
    for split, frame in (("suppression", suppression), ("attack_shots", shots)):
        write_split(table_from_frame(frame, split), out, config, split)
    # concept 1 becomes a rule whose checker is "all capitals" (its text stays: the splits name it)
    rule = replace(concepts[1], extra={**concepts[1].extra, "checker": "all_capital"}, concept_type="rule")
    write_concepts([concepts[0], rule], out, config)
    return out


def test_attacks_wrap_the_blended_prompt_and_keep_the_plain_one_for_the_judge():
    split = pd.DataFrame({"concept_id": [0], "input_concept": ["rivers"], "input_id": [0], "half": ["selection"],
                          "original_prompt": ["Plan a trip."], "blended_prompt": ["Plan a trip by a river."],
                          "defence_prompt": ["Avoid rivers."]})
    shots = pd.DataFrame({"concept_id": [0, 0, 0], "shot_id": [2, 0, 1], "question": ["q2", "q0", "q1"],
                          "answer": ["a2", "a0", "a1"]})
    plain = attacked_prompts(split, "none", None)
    assert plain["original_prompt"].tolist() == ["Plan a trip by a river."]
    assert plain["judged_prompt"].tolist() == ["Plan a trip."]
    two = attacked_prompts(split, "many-shot", 2, shots)["original_prompt"].iloc[0]
    assert two == "Question: q0\nAnswer: a0\n\nQuestion: q1\nAnswer: a1\n\nQuestion: Plan a trip by a river.\nAnswer:"
    prefix = attacked_prompts(split, "overwrite-prefix", None)["original_prompt"].iloc[0]
    assert prefix.endswith("Question: Plan a trip by a river.") and "talk about this: rivers" in prefix
    rule = attacked_prompts(split, "overwrite-postfix", None, concept_types={0: "rule"})["original_prompt"].iloc[0]
    assert rule.startswith("Question: Plan a trip by a river.") and "follow this rule: rivers" in rule
    with pytest.raises(Exception, match="fewer than evaluation.many_shot's 4"):
        attacked_prompts(split, "many-shot", 4, shots)


@pytest.mark.parametrize("settings, message", [
    ({"modes": ["steering", "dancing"]}, "evaluation.modes"),
    ({"modes": ["attacks"], "many_shot": [], "overwrite": []}, "name at least one attack"),
    ({"suppression_factors": [-1.0]}, "positive finite"),
    ({"defences": ["sideways"]}, "sideways"),
    ({"many_shot": [0]}, "positive whole numbers"),
])
def test_bad_evaluation_settings_are_refused_at_load(settings, message):
    with pytest.raises(Exception, match=message):
        EvaluationSection(**settings)
    assert EvaluationSection(modes=["attacks"]).modes == ["attacks", "suppression"]


def test_a_run_evaluates_suppression_attacks_and_rules(tiny_run, tiny_llama_dir, judging_llm, tmp_path):
    data = _with_suppression_splits(tiny_run.run_dir / "data", tmp_path / "data")
    path, run_dir = write_run_config(
        tmp_path, tiny_llama_dir, judging_llm,
        run={"name": "r", "output_dir": str(tmp_path / "runs"), "layer": 1, "dataset_dir": str(data)},
        methods={"train": ["diffmean", "prompt-steering"]}, evaluation=MODES)
    result = CliRunner().invoke(app, ["run", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "suppression-judge" in result.output

    generations = pd.read_parquet(run_dir / "inference" / "suppression.parquet")
    # prompt-steering cannot suppress; the defences and the unsteered model stand in for prompting.
    assert set(generations["method"]) == {"diffmean", "defence-prompt/prepend", "defence-prompt/append", "unsteered"}
    diffmean = generations[generations["method"] == "diffmean"]
    assert set(diffmean["factor"]) == {-1.0, -4.0} and (diffmean["magnitude"] < 0).all()
    assert set(zip(generations["attack"], generations["attack_n"].fillna(0))) == {
        ("none", 0), ("many-shot", 1), ("many-shot", 2), ("overwrite-prefix", 0)}
    prepend = generations[(generations["method"] == "defence-prompt/prepend") & (generations["attack"] == "none")]
    assert prepend["model_instruction"].str.startswith("Never mention").all()
    assert (generations["instruction"] != generations["model_instruction"]).all()  # judged on the plain prompt
    assert generations["rule_score"].notna().any() and generations["rule_score"].isna().any()

    board = json.loads((run_dir / "eval" / "leaderboard.json").read_text())["methods"]
    assert board["diffmean"]["suppression_score_mean"] is not None
    assert "attack_many-shot-2_score_mean" in board["defence-prompt/append"]
    report = (run_dir / "eval" / "report.md").read_text()
    for heading in ("## Suppression", "## Suppression under attack", "## Rule concepts: checker vs judge"):
        assert heading in report
    assert (run_dir / "eval" / "plots" / "suppression_attacks.png").exists()
    steering = pd.read_parquet(run_dir / "inference" / "steering.parquet")
    assert steering.loc[steering["concept_id"] == 1, "rule_score"].notna().all()
    # `axbench infer suppress` is the same stage function: on the run's own inputs it writes the same rows.
    out = tmp_path / "cli" / "suppression.parquet"
    cli = CliRunner().invoke(app, [
        "infer", "suppress", "--result", str(run_dir / "dictionaries" / "diffmean"), "--data", str(data),
        "--out", str(out), "--factors", "1,4", "--defences", "prepend,append", "--many-shot", "1,2",
        "--overwrite", "prefix", "--max-new-tokens", "6", "--batch-size", "8"])
    assert cli.exit_code == 0, cli.output
    pd.testing.assert_frame_equal(pd.read_parquet(out), generations, check_like=True)


def _config(tmp_path: Path, **sections) -> Path:
    import yaml

    concepts = tmp_path / "concepts.jsonl"
    concepts.write_text('{"concept_id": 0, "concept": "rivers", "concept_type": "topic"}\n'
                        '{"concept_id": 1, "concept": "use capitals", "concept_type": "rule", "checker": "shouting"}\n')
    raw = {"data": {"concept_path": str(concepts), "splits": ["train", "latent", "steering", "suppression",
                                                              "attack_shots"], "attack_shots": 4},
           "evaluation": {"modes": ["suppression", "attacks"], "many_shot": [2]}, **sections}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("change, message", [
    ({}, "unknown rule checker 'shouting'"),
    ({"mixed": True}, "the list mixes rules (first on line 2) with concepts that have no concept_type"),
    ({"data": {"splits": ["train", "latent", "steering"]}}, "needs the split(s) ['suppression', 'attack_shots']"),
    ({"evaluation": {"modes": ["attacks"], "many_shot": [6]}}, "data.attack_shots generates 4"),
    ({"evaluation": {"modes": ["attacks"], "many_shot": [4]}, "model": {"model": "smollm2-135m-instruct"},
      "data": {"splits": ["train", "latent", "steering", "suppression", "attack_shots"], "attack_shots": 4,
               "output_length": 4000}}, "more than the model's context"),
    ({"evaluation": {"modes": ["suppression"]}, "methods": {"train": ["diffmean", "prompt-steering"],
                                                           "steer": ["prompt-steering"]}}, "cannot suppress"),
])
def test_a_mode_that_cannot_run_is_refused_when_the_config_loads(tmp_path, change, message, monkeypatch):
    from axeval.config import AxbenchConfig, ConfigError

    mixed = change.pop("mixed", False)
    config = _config(tmp_path, **change)
    if mixed:  # a rule list where one line does not say its type
        path = config.with_name("concepts.jsonl")
        path.write_text(path.read_text().replace(', "concept_type": "topic"', "").replace('"shouting"', '"all_capital"'))
    elif change:  # the other cases have a valid concept list: only the named problem remains
        config.with_name("concepts.jsonl").write_text('{"concept_id": 0, "concept": "rivers"}\n')
    monkeypatch.setattr("axmethods.models.load_target_model", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(ConfigError, match=re.escape(message)):
        AxbenchConfig.load(config)
