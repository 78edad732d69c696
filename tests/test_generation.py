"""Generation steps and the whole run against a deterministic LLM stand-in and a tiny target model."""

from __future__ import annotations

import asyncio
import json

import pandas as pd
import pytest
from generation_helpers import CONCEPTS, RoutingServer, client_for

from axdata.builders import read_concepts, read_split
from axdata.concepts import Concept
from axdata.generation.config import DataGenerationConfig
from axdata.generation.contrast import contrast_concepts
from axdata.generation.examples import sample_instructions, tokenizer_truncator
from axdata.generation.genre import determine_genre
from axdata.generation.pipeline import generate_dataset
from axdata.generation.templates import WITH_CONCEPT, template_versions
from axdata.schema import EMPTY_CONCEPT, GENRES, validate_frame
from axmethods.chat_backend import TransformersChatBackend

SMALL = {"num_of_examples": 4, "output_length": 8, "latent_num_of_examples": 4, "imbalance_factor": 3,
         "steering_num_of_examples": 4, "concept_concurrency": 2}


@pytest.fixture
def server():
    server = RoutingServer().start()
    yield server
    server.stop()


@pytest.fixture
def llm(server, tmp_path):
    client = client_for(server.base_url, tmp_path)
    yield client
    client.close()


def validate(df: pd.DataFrame, split: str) -> None:
    # read_split's pandas conversion turns nullable integer columns with nulls into floats.
    nullable = {c: "Int64" for c in ("sae_id", "sample_seed") if c in df.columns}
    validate_frame(df.astype(nullable), split)


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_genre_uses_structured_output_and_falls_back_to_the_parse_rule(llm):
    assert run(determine_genre(llm, CONCEPTS[1], 42, 1.0)) == (("code",), None)
    genres, note = run(determine_genre(llm, Concept(9, "something unclassifiable"), 42, 1.0))
    assert genres == ("code", "math") and "parse rule" in note


def test_contrast_concepts_drop_none_single_word_and_related_meanings(llm):
    result = run(contrast_concepts(llm, CONCEPTS[0], seed=42, temperature=1.0, max_words=10, max_reasks=1))
    assert result.words == ["bank", "river", "money", "flow"]
    assert result.pairs == [("bank", "a company that keeps money")]
    assert (result.dropped_meanings, result.rejected, result.failures) == (2, 1, [])
    empty = run(contrast_concepts(llm, CONCEPTS[1], seed=42, temperature=1.0, max_words=10, max_reasks=1))
    assert empty.words == [] and empty.pairs == [] and empty.failures == []


def test_small_pools_are_walked_again_without_early_repeats():
    import random

    picked = sample_instructions(["a", "b", "c"], 7, random.Random(0))
    assert len(picked) == 7 and sorted(picked[:3]) == ["a", "b", "c"] and sorted(picked[3:6]) == ["a", "b", "c"]


def test_full_run_writes_every_split_with_provenance(llm, tiny_llama_target, tmp_path):
    config = DataGenerationConfig(**SMALL)
    target = TransformersChatBackend(tiny_llama_target, batch_size=4)
    truncate = tokenizer_truncator(tiny_llama_target.tokenizer)
    result = run(generate_dataset(CONCEPTS, config, llm=llm, target=target, out_dir=tmp_path / "out",
                                  dataset_config="tiny-l0", work_dir=tmp_path / "work", truncate=truncate))
    out = tmp_path / "out"
    train = read_split(out, "tiny-l0", "train")
    validate(train, "train")
    negatives = train[train.concept_id == -1]
    assert sorted(negatives.concept_genre) == sorted(GENRES * 2)  # 2 per genre, shared by every concept
    assert set(negatives.output_concept) == {EMPTY_CONCEPT}
    assert set(negatives.generator_model) == {target.model_name} and negatives.template_hash.isna().all()
    positives = train[train.category == "positive"]
    assert positives.groupby("concept_id").size().to_dict() == {0: 2, 1: 2, 2: 2}
    assert set(positives.template_hash) == {WITH_CONCEPT.version} and set(positives.generator_model) == {"gpt-4o-mini"}
    # LLM responses are cut to output_length tokens of the target tokenizer.
    assert all(len(tiny_llama_target.tokenizer.tokenize(text)) <= 8 for text in positives.output)
    assert not any(text.startswith('"') for text in positives.output)  # surrounding quotes stripped

    concepts = read_concepts(out, "tiny-l0")
    assert [c.genre for c in concepts] == ["text", "code", "math"]
    genre_of = {c.concept_id: c.genre for c in concepts}
    assert all(positives.concept_genre == positives.concept_id.map(genre_of))

    latent = read_split(out, "tiny-l0", "latent")
    validate(latent, "latent")
    counts = latent.groupby(["concept_id", "category"]).size().to_dict()
    assert counts == {(0, "hard negative"): 1, (0, "negative"): 4, (0, "positive"): 4,
                      (1, "negative"): 4, (1, "positive"): 4, (2, "negative"): 4, (2, "positive"): 4}
    hard = latent[latent.category == "hard negative"].iloc[0]
    assert hard.output_concept == "bank//a company that keeps money" and hard.output.startswith("hard")
    assert latent.sae_id.dropna().unique().tolist() == [1234]

    imbalance = read_split(out, "tiny-l0", "latent_imbalance")
    validate(imbalance, "latent_imbalance")
    assert len(imbalance) == 12  # 4 × 3, drawn from the 12 negatives of all concepts
    assert set(imbalance.output_concept) == {EMPTY_CONCEPT} and set(imbalance.concept_id) == {-1}
    assert set(imbalance.output) <= set(latent[latent.category == "negative"].output)

    steering = read_split(out, "tiny-l0", "steering")
    validate(steering, "steering")
    assert steering.groupby("concept_id").half.apply(list).tolist() == [["selection"] * 2 + ["heldout"] * 2] * 3
    assert steering.input_id.tolist() == [0, 1, 2, 3] * 3
    assert steering.original_prompt.nunique() > 4  # each concept draws its own prompts

    preference = read_split(out, "tiny-l0", "preference")
    validate(preference, "preference")
    assert preference.winning_output.tolist() == positives.output.tolist()
    own = run(target.complete_many([target_request_like(text) for text in preference.input]))
    assert preference.losing_output.tolist() == [c.text for c in own]

    report = json.loads(result.report_path.read_text())
    assert report["rows"] == {"train": 12, "latent": 25, "steering": 12, "preference": 6, "latent_imbalance": 12}
    assert report["templates"] == template_versions() and report["failures"] == []
    assert report["steps"]["positive"] == {"requested": 6, "produced": 6, "failed": 0, "reasked": 0}
    assert report["steps"]["contrast"]["kept"] == 1
    by_purpose = report["ledger"]["by_purpose"]
    assert by_purpose["positive"]["calls"] == 6 and by_purpose["genre"]["calls"] == 3
    assert report["ledger"]["by_concept"]["1"]["calls"] > 0
    assert report["ledger"]["total"]["cost_usd"] > 0  # gpt-4o-mini prices on the stand-in's token counts


def target_request_like(text: str):
    from axdata.llm.types import ChatRequest, SamplingParams

    return ChatRequest.user(text, purpose="check", params=SamplingParams(temperature=0.0, max_tokens=12))


def test_failed_answers_are_reasked_then_reported(llm, tiny_llama_target, tmp_path):
    concepts = [Concept(0, "a stubborn topic"), Concept(1, "a flaky topic")]
    config = DataGenerationConfig(**SMALL, splits=["train"], max_reasks=2)
    target = TransformersChatBackend(tiny_llama_target, batch_size=4)
    result = run(generate_dataset(concepts, config, llm=llm, target=target, out_dir=tmp_path / "out",
                                  dataset_config="c", work_dir=tmp_path / "work"))
    report = result.report
    stubborn = [f for f in report["failures"] if f["concept_id"] == 0]
    assert len(stubborn) == 2 and {f["reason"] for f in stubborn} == {"refused"}
    assert stubborn[0]["concept"] == "a stubborn topic" and stubborn[0]["attempts"] == 3
    assert stubborn[0]["step"] == "positive" and "sorry" in stubborn[0]["last_answer"]
    assert report["steps"]["positive"]["failed"] == 2 and report["steps"]["positive"]["reasked"] >= 4
    train = read_split(tmp_path / "out", "c", "train")
    assert (train.concept_id == 1).sum() == 2  # the flaky concept got its rows by re-asking
    assert (train.concept_id == 0).sum() == 0


def test_rerun_reuses_committed_units_and_changed_config_remakes_them(llm, tiny_llama_target, tmp_path):
    target = TransformersChatBackend(tiny_llama_target, batch_size=4)
    kwargs = {"llm": llm, "target": target, "out_dir": tmp_path / "out", "dataset_config": "c",
              "work_dir": tmp_path / "work"}
    config = DataGenerationConfig(**SMALL, splits=["train", "steering"])
    first = run(generate_dataset(CONCEPTS[:2], config, **kwargs))
    again = run(generate_dataset(CONCEPTS[:2], config, **kwargs))
    assert again.report["units"] == {"made": 0, "reused": first.report["units"]["made"]}
    changed = run(generate_dataset(CONCEPTS[:2], DataGenerationConfig(**{**SMALL, "output_length": 6},
                                                                   splits=["train", "steering"]), **kwargs))
    assert changed.report["units"]["reused"] == 0


def test_cost_projection_at_gpt_4o_mini_prices(llm, tiny_llama_target, tmp_path):
    config = DataGenerationConfig(**SMALL, splits=["train"])
    target = TransformersChatBackend(tiny_llama_target, batch_size=4)
    result = run(generate_dataset(CONCEPTS, config, llm=llm, target=target, out_dir=tmp_path / "out",
                                  dataset_config="c", work_dir=tmp_path / "work"))
    projection = result.report["cost_projection"]
    per_call = projection["per_call"]
    expected = per_call["genre"]["usd"] + 72 * per_call["positive"]["usd"]
    assert projection["training_usd_per_concept"] == pytest.approx(expected)
    assert projection["within_claim"] is True and projection["training_usd_per_concept"] < 0.01
    assert projection["detection_eval_usd_per_concept"] is None  # no latent data in this run


def test_config_rejects_inconsistent_splits():
    with pytest.raises(ValueError, match="add 'latent'"):
        DataGenerationConfig(splits=["latent_imbalance"])
    with pytest.raises(ValueError, match="unknown split"):
        DataGenerationConfig(splits=["tarin"])


def test_instruction_pools(tmp_path):
    from axdata.generation.pools import HUB_SOURCES, InstructionPoolError, load_pool

    shipped = load_pool({})
    assert {g: (len(s["train"]), len(s["test"])) for g, s in shipped.splits.items()} == {
        "text": (30, 30), "code": (15, 15), "math": (15, 15)}
    assert len(shipped.general) == 40
    local = tmp_path / "math.csv"
    pd.DataFrame({"question": [f"What is {i} + {i}?" for i in range(5)]}).to_csv(local, index=False)
    pool = load_pool({"math": str(local)}, pool_size=3)
    assert pool.splits["math"]["train"] == ("What is 0 + 0?", "What is 1 + 1?", "What is 2 + 2?")
    assert len(pool.splits["math"]["test"]) == 2 and pool.fingerprint() != shipped.fingerprint()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(InstructionPoolError, match="needs one of input, instruction, question"):
        load_pool({"text": str(bad)})
    with pytest.raises(InstructionPoolError, match="neither 'shipped'"):
        load_pool({"code": "someone/unknown-dataset"})
    dolly = HUB_SOURCES["databricks/databricks-dolly-15k"].keep
    assert dolly({"category": "open_qa", "context": "", "instruction": "Why?"})
    assert not dolly({"category": "open_qa", "context": "some text", "instruction": "Why?"})
    assert not dolly({"category": "brainstorming", "context": "", "instruction": "Why?"})
    assert not HUB_SOURCES["openai/gsm8k"].keep({"question": "x" * 500})


def test_a_split_that_got_no_rows_is_written_empty_with_its_schema_and_a_note(tmp_path):
    """Found by the Gemma-2-2B-shape dry run: random target weights gave no preference pair, and the empty
    frame (no columns) failed the schema check, losing the data stage's work."""
    from types import SimpleNamespace

    from axdata.generation.config import DataGenerationConfig
    from axdata.generation.pipeline import _assemble
    from axdata.schema import columns, table_from_frame

    config = DataGenerationConfig(splits=("train", "preference"))
    frames, notes = _assemble(config, [], [{"train": SimpleNamespace(rows=[]),
                                            "preference": SimpleNamespace(rows=[])}])
    for split in ("train", "preference"):
        table = table_from_frame(frames[split], split, source="test")
        assert table.num_rows == 0 and table.column_names[:len(columns(split))] == [c.name for c in columns(split)]
    assert any(note.startswith("preference: no rows were generated") for note in notes)
