"""`axbench run` with evaluation modes steering + suppression + attacks + rules on a tiny model.

The dataset is the session's tiny run's, plus hand-written suppression and attack_shots splits (the generated ones
are tested in tests/test_suppression_data.py), and concept 1 made a rule with a checker.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest
from fixtures_runs import JudgingServer, write_run_config
from typer.testing import CliRunner

from axdata.builders import list_configs, read_concepts, read_split, write_concepts, write_split
from axdata.concepts import Concept
from axdata.errors import InputError
from axdata.schema import table_from_frame
from axeval.cli import app
from axeval.modes import DEFENCES, DefenceSteerer, EvaluationSection, attacked_prompts
from axeval.stages.dataset import RunDataset

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
    ({"defences": ["prepend_rewrite"]}, "use any of system, prepend, append, system-rewrite, prepend-rewrite, "
                                        "append-rewrite"),
    ({"many_shot": [0]}, "positive whole numbers"),
])
def test_bad_evaluation_settings_are_refused_at_load(settings, message):
    with pytest.raises(Exception, match=message):
        EvaluationSection(**settings)
    assert EvaluationSection(modes=["attacks"]).modes == ["attacks", "suppression"]
    assert EvaluationSection().defences == ["system", "prepend", "append"]  # the rewrites are opt-in
    assert EvaluationSection(defences=["prepend-rewrite", "append"]).defences == ["prepend-rewrite", "append"]


def _one_concept_dataset(directory: Path, **columns) -> RunDataset:
    split = pd.DataFrame({"dataset_name": ["suppression"], "concept_id": [0], "input_concept": ["rivers"],
                          "input_id": [0], "original_prompt": ["Plan a trip."], "half": ["selection"],
                          "blended_prompt": ["Plan a trip by a river."], "defence_prompt": ["Avoid rivers."],
                          **columns})
    write_split(table_from_frame(split, "suppression"), directory, "c", "suppression")
    write_concepts([Concept(0, "rivers")], directory, "c")
    return RunDataset(directory, "c")


def test_the_suppression_stage_builds_the_rewrite_defences_from_the_second_text(tiny_llama_target, tmp_path):
    """`defence-prompt/<placement>-rewrite` places the split's defence_rewrite in the system turn, before or after
    the blended prompt; the bare placements keep the first text, under their old names and provenance (so their
    part files still resume). A split without the second text is refused before anything is generated."""
    from axeval.config import InferenceSection
    from axeval.stages.suppression import generate_suppression

    dataset = _one_concept_dataset(tmp_path / "data", defence_rewrite=["Say nothing of rivers."])
    evaluation = EvaluationSection(modes=["suppression"], defences=list(DEFENCES))
    settings = InferenceSection(max_new_tokens=2, steering_batch_size=8)
    steerers = [DefenceSteerer(name) for name in evaluation.defences]
    summary = generate_suppression(tiny_llama_target, steerers, dataset, tmp_path / "out.parquet", settings=settings,
                                   evaluation=evaluation, seed=0)
    rows = pd.read_parquet(tmp_path / "out.parquet").set_index("method")
    assert summary["generations"] == 6 and list(rows.index) == [f"defence-prompt/{name}" for name in DEFENCES]
    first, second, asked = "Avoid rivers.", "Say nothing of rivers.", "Plan a trip by a river."
    assert rows.loc["defence-prompt/prepend-rewrite", "model_instruction"] == f"{second}\n\n{asked}"
    assert rows.loc["defence-prompt/append-rewrite", "model_instruction"] == f"{asked}\n\n{second}"
    assert rows.loc["defence-prompt/prepend", "model_instruction"] == f"{first}\n\n{asked}"
    assert rows.loc["defence-prompt/system-rewrite", "prompt"] == tiny_llama_target.format_prompt(asked, system=second)
    assert rows.loc["defence-prompt/system", "prompt"] == tiny_llama_target.format_prompt(asked, system=first)
    assert (rows["instruction"] == "Plan a trip.").all()  # judged against the plain instruction
    assert DefenceSteerer("prepend").provenance() == {"defence": "prepend"}

    old = _one_concept_dataset(tmp_path / "old")  # written before defence_rewrite existed: nulls once conformed
    with pytest.raises(InputError, match=r"evaluation.defences \['system-rewrite', 'prepend-rewrite', "
                                         r"'append-rewrite'\] place .* lacks for 1 concept\(s\) \(first: 0\)"):
        generate_suppression(tiny_llama_target, steerers, old, tmp_path / "refused.parquet", settings=settings,
                             evaluation=evaluation, seed=0)
    assert not (tmp_path / "refused").exists() and not (tmp_path / "refused.parquet").exists()


@dataclass(frozen=True)
class SuppressionRun:
    data: Path  # the dataset, with the hand-written suppression and attack_shots splits
    run_dir: Path
    output: str  # what `axbench run` printed


@pytest.fixture(scope="module")
def suppression_run(tiny_run, tiny_llama_dir, tmp_path_factory) -> Iterator[SuppressionRun]:
    """A finished `axbench run` with every mode (MODES), shared by this module's tests: read it, never write into it
    (copy it first)."""
    tmp_path = tmp_path_factory.mktemp("suppression-run")
    data = _with_suppression_splits(tiny_run.run_dir / "data", tmp_path / "data")
    server = JudgingServer().start()
    try:
        path, run_dir = write_run_config(
            tmp_path, tiny_llama_dir, server,
            run={"name": "r", "output_dir": str(tmp_path / "runs"), "layer": 1, "dataset_dir": str(data)},
            methods={"train": ["diffmean", "prompt-steering"]}, evaluation=MODES)
        result = CliRunner().invoke(app, ["run", str(path)], terminal_width=200)
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    yield SuppressionRun(data, run_dir, result.output)


def test_a_run_evaluates_suppression_attacks_and_rules(suppression_run, tmp_path):
    data, run_dir = suppression_run.data, suppression_run.run_dir
    assert "suppression-judge" in suppression_run.output

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


def test_a_rewrite_defence_on_a_dataset_without_the_second_text_is_refused_when_the_config_loads(tmp_path,
                                                                                                  monkeypatch):
    from axeval.config import AxbenchConfig, ConfigError

    old = {"dataset_dir": str(_one_concept_dataset(tmp_path / "old").directory)}
    new = {"dataset_dir": str(_one_concept_dataset(tmp_path / "new", defence_rewrite=["Shun rivers."]).directory)}
    rewrite = {"modes": ["suppression"], "defences": ["prepend", "append-rewrite"]}
    monkeypatch.setattr("axmethods.models.load_target_model", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(ConfigError, match=re.escape(
            "evaluation.defences ['append-rewrite'] place the suppression split's second defence text "
            f"(defence_rewrite), which run.dataset_dir {old['dataset_dir']} lacks for 1 concept(s) (first: 0)")):
        AxbenchConfig.load(_config(tmp_path, run=old, evaluation=rewrite))
    AxbenchConfig.load(_config(tmp_path, run=old, evaluation={**rewrite, "defences": ["prepend", "append"]}))
    assert AxbenchConfig.load(_config(tmp_path, run=new, evaluation=rewrite)).evaluation.defences == rewrite["defences"]


def _tamper(run_dir: Path, method: str, key: str) -> None:
    """Move one leaderboard.json value by 0.1 inside its 0-2 range: only the rebuild can tell."""
    path = run_dir / "eval" / "leaderboard.json"
    board = json.loads(path.read_text())
    value = board["methods"][method][key]
    board["methods"][method][key] = value + 0.1 if value < 1.9 else value - 0.1
    path.write_text(json.dumps(board, indent=2))


def test_a_suppression_run_publishes_its_scores_and_a_tampered_one_is_refused(suppression_run, hub_env, tmp_path):
    """`axbench eval push`, `leaderboard push` and `dictionary push` of a run with suppression and attacks: the
    `.eval_results` carry the suppression task, the leaderboard dataset the suppression and attack scores, each the
    value of the run's leaderboard.json; a leaderboard.json or `.eval_results` with a changed suppression value is
    refused before anything is uploaded."""
    import datasets
    import yaml
    from huggingface_hub import HfApi, ModelCard, hf_hub_download

    from axdata.errors import InputError
    from axeval.publish import read_eval_results, verify_run_for_publishing

    run_dir, config = suppression_run.run_dir, list_configs(suppression_run.data)[0]
    board = json.loads((run_dir / "eval" / "leaderboard.json").read_text())["methods"]
    runner = CliRunner()
    model_repo = hub_env.repo_id("diffmean")
    HfApi().create_repo(model_repo)
    result = runner.invoke(app, ["eval", "push", str(run_dir), model_repo, "--method", "diffmean"])
    assert result.exit_code == 0, result.output
    published = yaml.safe_load(Path(hf_hub_download(model_repo, f".eval_results/axbench-{config}.yaml")).read_text())
    tasks = {entry["dataset"]["task_id"]: entry for entry in published}
    assert set(tasks) == {f"{kind}-{config}" for kind in ("concept_detection", "steering", "suppression")}
    suppression = tasks[f"suppression-{config}"]
    assert suppression["value"] == round(board["diffmean"]["suppression_score_mean"], 4)
    assert "suppression score (0-2)" in suppression["notes"] and "judge gpt-4o-mini" in suppression["notes"]
    # a defence prompt has a suppression score only; its file is the method's name made a file name
    prepend = yaml.safe_load((run_dir / "eval" / ".eval_results" / "defence-prompt-prepend.yaml").read_text())
    assert [e["dataset"]["task_id"] for e in prepend] == [f"suppression-{config}"]
    # a file from elsewhere is checked by range alone: a suppression score is 0-2, like steering's
    loose = tmp_path / "loose.yaml"
    loose.write_text(yaml.safe_dump([{**suppression, "value": 1.5}]))
    assert read_eval_results(loose)[1][0]["value"] == 1.5

    board_repo = hub_env.repo_id("leaderboard")
    result = runner.invoke(app, ["leaderboard", "push", str(run_dir), board_repo])
    assert result.exit_code == 0, result.output
    frame = datasets.load_dataset(board_repo, split="train").to_pandas().set_index("method")
    for method in ("diffmean", "defence-prompt/prepend", "defence-prompt/append"):
        values = board[method]
        assert frame.loc[method, "suppression_score"] == pytest.approx(values["suppression_score_mean"])
        assert frame.loc[method, "suppression_ci_low"] == pytest.approx(values["suppression_score_ci_low"])
        attacks = json.loads(frame.loc[method, "attack_scores"])
        assert set(attacks) == {"many-shot-1", "many-shot-2", "overwrite-prefix"}
        for label, score in attacks.items():
            assert score == pytest.approx(values[f"attack_{label}_score_mean"])
    assert pd.isna(frame.loc["prompt-steering", "suppression_score"])  # it steers, it does not suppress
    result = runner.invoke(app, ["leaderboard", "show", board_repo, "--html", str(tmp_path / "board.html")],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Suppression" in (tmp_path / "board.html").read_text()

    dictionary_repo = hub_env.repo_id("diffmean-dictionary")
    result = runner.invoke(app, ["dictionary", "push", str(run_dir / "dictionaries" / "diffmean"), dictionary_repo,
                                 "--eval-results", str(run_dir)])
    assert result.exit_code == 0, result.output
    index = {r.task_name: r.metric_value for r in ModelCard.load(dictionary_repo).data.eval_results}
    assert index[f"suppression-{config}"] == suppression["value"]

    # Tampered copies: the copy as such verifies; a changed suppression or attack value does not.
    for method, key in (("diffmean", "suppression_score_mean"), ("defence-prompt/append",
                                                                 "attack_many-shot-2_score_mean")):
        copy = tmp_path / f"tampered-{key}"
        shutil.copytree(run_dir, copy)
        verify_run_for_publishing(copy)
        _tamper(copy, method, key)
        with pytest.raises(InputError, match=re.escape(f"methods.{method}.{key} is")):
            verify_run_for_publishing(copy)
        result = runner.invoke(app, ["leaderboard", "push", str(copy), hub_env.repo_id("refused")])
        assert result.exit_code == 1 and "Publishing refused" in result.output
    copy = tmp_path / "tampered-eval-results"
    shutil.copytree(run_dir, copy)
    path = copy / "eval" / ".eval_results" / "diffmean.yaml"
    entries = yaml.safe_load(path.read_text())
    for entry in entries:
        if entry["dataset"]["task_id"].startswith("suppression"):
            entry["value"] = round(entry["value"] + 0.1 if entry["value"] < 1.9 else entry["value"] - 0.1, 4)
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    result = runner.invoke(app, ["eval", "push", str(copy), model_repo, "--method", "diffmean"])
    assert result.exit_code == 1 and "not the results the run's stage outputs give now" in result.output
