"""Suppression and attack data (issue 26): generation against a deterministic LLM stand-in, the splits' schema,
resume, the config, and the round trip through the Hub stand-in with plain `datasets`."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from fixtures_hub import HubEnv
from fixtures_llm import FaultServer, Reply, ok
from generation_helpers import CONCEPTS, RoutingServer, answer, client_for
from huggingface_hub import DatasetCard, hf_hub_download
from typer.testing import CliRunner

from axdata.benchmark import task_id
from axdata.builders import list_splits, read_split, split_files, write_split
from axdata.builders.hub import pull_dataset, push_dataset
from axdata.concepts import Concept
from axdata.errors import InputError
from axdata.generation.config import DataGenerationConfig
from axdata.generation.pipeline import run_generation, write_dataset
from axdata.generation.suppression import SHOTS_PER_CALL, parse_shots
from axdata.generation.templates import (
    ATTACK_SHOTS,
    ATTACK_SHOTS_RULE,
    BLEND,
    BLEND_RULE,
    DEFENCE,
    DEFENCE_RULE,
    DEFENCE_RULE_REWRITE,
    FALLBACK_BLEND,
    FALLBACK_DEFENCE,
    template_versions,
)
from axdata.schema import SPLITS, SchemaError, table_from_frame, validate_frame
from axeval.cli.data import data_app

RULE = Concept(3, "write only in capital letters", concept_type="rule")
GARBAGE = Concept(4, "a garbage topic the stand-in cannot write about")
SUPPRESSION_SPLITS = ["steering", "suppression", "attack_shots"]
SMALL = {"steering_num_of_examples": 4, "attack_shots": 7, "concept_concurrency": 2, "max_reasks": 1,
         "splits": SUPPRESSION_SPLITS}


def _stand_in(body: dict[str, Any]) -> str:
    """The shared stand-in (it answers the suppression prompts too); a 'garbage' concept gets nothing usable."""
    prompt = body["messages"][-1]["content"]
    if "garbage" in prompt:
        if prompt.startswith("Rewrite the instruction below"):
            return "   "
        if prompt.startswith("Write a system instruction") or prompt.startswith("Here is a rule"):
            return "I'm sorry, but I can't help with that."
        if re.match(r"Write \d+ short example exchanges", prompt):
            return "Here are some thoughts, without any labels."
    if prompt == DEFENCE_RULE_REWRITE.render(concept=RULE.concept):  # the rule's second defence text
        return "Reworded: never answer in capital letters only, even when asked to."
    return answer(body)


class SuppressionServer(RoutingServer):
    def _next(self, body: dict[str, Any]) -> Reply:
        FaultServer._next(self, body)  # logs the request and counts it in flight, like RoutingServer
        text = _stand_in(body)
        prompt = body["messages"][-1]["content"]
        return ok(text, prompt_tokens=len(prompt) // 4 + 10, completion_tokens=max(1, len(text) // 4))


@pytest.fixture
def server():
    server = SuppressionServer().start()
    yield server
    server.stop()


@pytest.fixture
def llm(server, tmp_path):
    client = client_for(server.base_url, tmp_path)
    yield client
    client.close()


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def generate(llm, tmp_path: Path, concepts: list[Concept], **config: Any):
    # No split here needs the target model; the LLM client stands in for it (only its name is read).
    return run(run_generation(concepts, DataGenerationConfig(**{**SMALL, **config}), llm=llm, target=llm,
                              work_dir=tmp_path / "work"))


def valid(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    validate_frame(frame.astype({c: "Int64" for c in ("sae_id", "sample_seed") if c in frame.columns}), split)
    return frame


def test_suppression_rows_are_the_steering_prompts_blended_with_one_defence_per_concept(llm, server, tmp_path):
    frames, _, report = generate(llm, tmp_path, [*CONCEPTS, RULE])
    steering, suppression = frames["steering"], valid(frames["suppression"], "suppression")
    keys = ["concept_id", "input_concept", "input_id", "original_prompt", "half", "sae_link"]
    pd.testing.assert_frame_equal(suppression[keys], steering[keys])  # same draw, same halves
    assert (suppression.blended_prompt != suppression.original_prompt).all()
    assert all(b.startswith(o) and "Relate it to" in b and not b.startswith("Rewritten")
               for o, b in zip(suppression.original_prompt, suppression.blended_prompt))
    assert set(suppression.dataset_name) == {"suppression"}
    assert suppression.groupby("concept_id").defence_prompt.nunique().eq(1).all()
    assert suppression.sae_id.dropna().unique().tolist() == [1234]

    topics, rules = suppression[suppression.concept_id < 3], suppression[suppression.concept_id == 3]
    assert set(topics.template_hash) == {BLEND.version} and set(rules.template_hash) == {BLEND_RULE.version}
    assert set(topics.defence_prompt) == {"Never mention the concept in your answer."}
    assert set(rules.defence_prompt) == {f"Strictly avoid the rule {RULE.concept}."}
    # the second defence text (RePS's suppress_rewrite), one per concept: a rule's from the rule-rewrite template
    assert suppression.groupby("concept_id").defence_rewrite.nunique().eq(1).all()
    assert set(rules.defence_rewrite) == {"Reworded: never answer in capital letters only, even when asked to."}
    assert set(topics.defence_rewrite) == {"Never mention the concept in your answer."}  # the stand-in ignores seeds
    asked = [(r["messages"][-1]["content"], r.get("seed")) for r in server.requests]
    for concept in CONCEPTS:  # a topic's: the same request as its defence prompt, asked again with another seed
        seeds = [seed for prompt, seed in asked if prompt == DEFENCE.render(concept=concept.concept)]
        assert len(seeds) == 2 and seeds[0] != seeds[1]
    assert [prompt for prompt, _ in asked].count(DEFENCE_RULE.render(concept=RULE.concept)) == 1
    assert [prompt for prompt, _ in asked].count(DEFENCE_RULE_REWRITE.render(concept=RULE.concept)) == 1
    assert set(suppression.generator_model) == {"gpt-4o-mini"}

    shots = valid(frames["attack_shots"], "attack_shots")
    assert shots.groupby("concept_id").shot_id.apply(list).tolist() == [list(range(7))] * 4
    assert shots.question.is_unique and shots.question.str.startswith("What about").all()
    assert shots.answer.str.endswith("concept.\nIt runs on.").all()
    assert set(shots[shots.concept_id == 3].template_hash) == {ATTACK_SHOTS_RULE.version}
    assert set(shots[shots.concept_id < 3].template_hash) == {ATTACK_SHOTS.version}

    # every call is in the ledger: n blends + 2 defences per concept, 7 shots = 2 calls (5 + 2) per concept
    by_purpose = report["ledger"]["by_purpose"]
    assert by_purpose["suppression_blend"]["calls"] == 4 * 4 and by_purpose["suppression_defence"]["calls"] == 4
    assert by_purpose["suppression_defence_rewrite"]["calls"] == 4
    assert report["steps"]["suppression_defence_rewrite"] == {"requested": 1 * 4, "produced": 4, "failed": 0,
                                                               "reasked": 0, "fallback": 0}
    assert by_purpose["attack_shots"]["calls"] == 4 * -(-7 // SHOTS_PER_CALL)
    assert report["steps"]["suppression_blend"] == {"requested": 16, "produced": 16, "failed": 0, "reasked": 0,
                                                     "fallback": 0}
    assert report["rows"] == {"steering": 16, "suppression": 16, "attack_shots": 28} and report["failures"] == []
    assert {"blend", "defence_rule", "defence_rule_rewrite", "attack_shots_rule", "fallback_blend"} <= set(
        report["templates"])


def test_llm_failures_fall_back_to_fixed_text_and_are_counted(llm, tmp_path):
    frames, _, report = generate(llm, tmp_path, [CONCEPTS[0], GARBAGE])
    suppression = valid(frames["suppression"], "suppression")
    bad = suppression[suppression.concept_id == GARBAGE.concept_id]
    assert bad.blended_prompt.tolist() == [FALLBACK_BLEND.render(instruction=text, concept=GARBAGE.concept)
                                           for text in bad.original_prompt]
    assert set(bad.defence_prompt) == set(bad.defence_rewrite) == {FALLBACK_DEFENCE.render(concept=GARBAGE.concept)}
    assert set(bad.template_hash) == {FALLBACK_BLEND.version} and bad.generator_model.isna().all()
    assert report["steps"]["suppression_blend"]["fallback"] == 4
    assert report["steps"]["suppression_defence"]["fallback"] == 1
    assert report["steps"]["suppression_defence_rewrite"]["fallback"] == 1
    notes = " ".join(report["notes"])
    assert "no blended prompt for 4 of 4" in notes and "no defence prompt" in notes and "no defence rewrite" in notes
    # no shots are invented: the concept has none, and the failure and the shortfall are reported
    assert set(frames["attack_shots"].concept_id) == {0}
    assert report["steps"]["attack_shots"]["produced"] == 7 and report["steps"]["attack_shots"]["failed"] == 7
    assert "0 of 7 attack shots" in notes
    steps = {failure["step"] for failure in report["failures"] if failure["concept_id"] == GARBAGE.concept_id}
    assert steps == {"suppression_blend", "suppression_defence", "suppression_defence_rewrite", "attack_shots"}


def test_resume_reuses_finished_units_and_adding_a_split_makes_only_its_units(llm, server, tmp_path):
    generate(llm, tmp_path, CONCEPTS[:2], splits=["steering", "suppression"])
    asked = len(server.requests)
    frames, _, report = generate(llm, tmp_path, CONCEPTS[:2])
    # genre, steering and suppression units come back from the work dir; only attack_shots is made
    assert report["units"] == {"made": 2, "reused": 6}
    assert len(server.requests) == asked + 2 * 2 and len(frames["attack_shots"]) == 14
    again, _, report = generate(llm, tmp_path, CONCEPTS[:2])
    assert report["units"] == {"made": 0, "reused": 8} and len(server.requests) == asked + 4
    pd.testing.assert_frame_equal(again["suppression"], frames["suppression"])


def test_too_few_steering_instructions_fail_before_any_llm_call(llm, server, tmp_path):
    with pytest.raises(InputError, match="steering_num_of_examples=100000 exceeds"):
        generate(llm, tmp_path, CONCEPTS, splits=["suppression"], steering_num_of_examples=100_000)
    assert server.requests == []


def test_parse_shots_reads_the_usual_layouts():
    text = ("Sure! Here are two.\n1. Question: Where do I start?\nAnswer: Start here.\n\n"
            "User: Second?\nAssistant: Yes.\nP.S. done\n\nQ: no answer\n"
            "Question: Twice?\nAnswer: first\nAnswer: second\n")
    assert parse_shots(text) == [("Where do I start?", "Start here."), ("Second?", "Yes.\nP.S. done"),
                                 ("Twice?", "first")]
    assert parse_shots("no labels at all") == []


def _suppression_frame() -> pd.DataFrame:
    return pd.DataFrame({"dataset_name": ["suppression"] * 2, "concept_id": [0, 0], "input_concept": ["c", "c"],
                         "input_id": [0, 1], "original_prompt": ["a", "b"], "blended_prompt": ["a c", "b c"],
                         "half": ["selection", "heldout"], "defence_prompt": ["avoid c", "avoid c"]})


def _shots_frame() -> pd.DataFrame:
    return pd.DataFrame({"concept_id": [0, 0], "input_concept": ["c", "c"], "shot_id": [0, 1], "question": ["q", "r"],
                         "answer": ["a c", "b c"]})


@pytest.mark.parametrize(("split", "change", "column", "says"), [
    ("suppression", lambda f: f.drop(columns="blended_prompt"), "blended_prompt", "missing"),
    ("suppression", lambda f: f.assign(half=["selection", "test"]), "half", "outside"),
    ("suppression", lambda f: f.assign(defence_prompt=["avoid c", "avoid it"]), "defence_prompt", "more than one"),
    ("suppression", lambda f: f.assign(defence_rewrite=["shun c", None]), "defence_rewrite", "more than one"),
    ("suppression", lambda f: f.assign(input_id=[1, 1]), "input_id", "repeated"),
    ("suppression", lambda f: f.assign(concept_id=[-1, -1]), "concept_id", "without a concept"),
    ("attack_shots", lambda f: f.assign(shot_id=[0, 0]), "shot_id", "repeated"),
    ("attack_shots", lambda f: f.assign(shot_id=[-1, 0]), "shot_id", "negative"),
    ("attack_shots", lambda f: f.assign(answer=["a", None]), "answer", "null"),
])
def test_schema_names_the_column_and_the_problem(split, change, column, says):
    frame = _suppression_frame() if split == "suppression" else _shots_frame()
    validate_frame(frame, split)
    with pytest.raises(SchemaError) as caught:
        validate_frame(change(frame), split)
    assert caught.value.problems[0][0] == column and says in caught.value.problems[0][1]
    assert split in str(caught.value)


def test_config_attack_shots_is_validated_and_new_splits_are_opt_in():
    assert {"suppression", "attack_shots"} <= set(SPLITS)
    assert "suppression" not in DataGenerationConfig().splits and DataGenerationConfig().attack_shots == 8
    for bad in (0, 201):
        with pytest.raises(InputError, match=f"attack_shots={bad}.*between 1 and 200"):
            DataGenerationConfig(attack_shots=bad)
    DataGenerationConfig(splits=["suppression", "attack_shots"], attack_shots=200)


def test_written_splits_are_listed_and_round_trip_through_the_hub(llm, tmp_path, hub_env: HubEnv):
    frames, concepts, report = generate(llm, tmp_path, [CONCEPTS[0], RULE])
    out = tmp_path / "out"
    write_dataset(frames, concepts, report, out_dir=out, dataset_config="tiny-l0", report_path=tmp_path / "r.json",
                  provenance={"template_hashes": template_versions()})
    assert list_splits(out, "tiny-l0") == SUPPRESSION_SPLITS
    info = CliRunner().invoke(data_app, ["info", str(out)], terminal_width=200)
    assert info.exit_code == 0 and "suppression" in info.output and "attack_shots" in info.output

    repo_id = hub_env.repo_id("suppression")
    push_dataset(out, repo_id)
    for split in SUPPRESSION_SPLITS:
        loaded = datasets.load_dataset(repo_id, "tiny-l0", split=split).data.table
        local = pq.read_table(split_files(out, "tiny-l0", split))
        for name in local.column_names:
            assert loaded.column(name).to_pylist() == local.column(name).to_pylist(), (split, name)
    registration = yaml.safe_load(Path(hf_hub_download(repo_id, "eval.yaml", repo_type="dataset")).read_text())
    tasks = {task["id"]: task for task in registration["tasks"]}
    assert tasks[task_id("suppression", "tiny-l0")] == {"id": "suppression-tiny-l0", "config": "tiny-l0",
                                                        "split": "suppression"}
    card = DatasetCard.load(repo_id, repo_type="dataset")
    assert "`blended_prompt`" in card.text and "many-shot attack material" in card.text

    pulled = tmp_path / "pulled"
    pull_dataset(repo_id, pulled)
    for split in SUPPRESSION_SPLITS:
        assert read_split(pulled, "tiny-l0", split).equals(read_split(out, "tiny-l0", split))
    assert read_split(pulled, "tiny-l0", "suppression").defence_rewrite.notna().all()


def test_a_suppression_split_written_before_the_rewrite_column_still_loads(tmp_path):
    """defence_rewrite is nullable: a split without it validates, and conforming adds it as nulls (the rewrite
    defences refuse such a split: tests/test_suppression_run.py)."""
    old = _suppression_frame()
    validate_frame(old, "suppression")
    write_split(table_from_frame(old, "suppression"), tmp_path, "old", "suppression")
    back = read_split(tmp_path, "old", "suppression")
    assert back.defence_rewrite.isna().all() and back[list(old.columns)].to_dict("list") == old.to_dict("list")
    validate_frame(back, "suppression")


def test_a_concept_short_of_shots_gets_its_train_positives_in_their_place(llm, tmp_path):
    """The embedded 135M LLM rarely writes Question:/Answer: pairs; with the train split made too, a concept the
    LLM wrote no shots for gets its own train positives as shots (real pairs whose answers carry the concept),
    counted and noted; a concept with all its shots is left as it was."""
    frames, _, report = generate(llm, tmp_path, [CONCEPTS[0], GARBAGE], splits=["train", "attack_shots"],
                                 attack_shots=3, num_of_examples=8)
    shots, train = valid(frames["attack_shots"], "attack_shots"), frames["train"]
    assert shots.groupby("concept_id").shot_id.apply(list).to_dict() == {0: [0, 1, 2], GARBAGE.concept_id: [0, 1, 2]}
    assert set(shots[shots.concept_id == 0].template_hash) == {ATTACK_SHOTS.version}  # all written: untouched
    mine = shots[shots.concept_id == GARBAGE.concept_id]
    positives = train[(train.concept_id == GARBAGE.concept_id) & (train.category == "positive")].head(3)
    assert mine.question.tolist() == positives.input.tolist() and mine.answer.tolist() == positives.output.tolist()
    assert mine.template_hash.tolist() == positives.template_hash.tolist()  # the train row's own provenance
    assert set(mine.input_concept) == {GARBAGE.concept}
    assert report["steps"]["attack_shots"]["from_train_positives"] == 3
    assert f"concept {GARBAGE.concept_id}: 3 attack shot(s) taken from its train positives" in " ".join(report["notes"])
    again, _, _ = generate(llm, tmp_path, [CONCEPTS[0], GARBAGE], splits=["train", "attack_shots"],
                           attack_shots=3, num_of_examples=8)
    pd.testing.assert_frame_equal(again["attack_shots"], frames["attack_shots"])  # resumed: the same rows
