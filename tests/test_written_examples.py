"""Examples written by people replace LLM generation for the concepts they cover; the rest is generated."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from importlib import resources
from pathlib import Path

import pytest
from generation_helpers import CONCEPTS, RoutingServer, client_for

from axdata.builders import read_concepts, read_split
from axdata.concepts import load_concepts
from axdata.generation.config import DataGenerationConfig
from axdata.generation.examples import tokenizer_truncator
from axdata.generation.pipeline import generate_dataset
from axdata.generation.written import WRITTEN_MODEL, WrittenExamples, WrittenExamplesError
from axmethods.chat_backend import TransformersChatBackend

SMALL = {"num_of_examples": 4, "output_length": 8, "latent_num_of_examples": 2, "imbalance_factor": 2,
         "steering_num_of_examples": 2, "concept_concurrency": 2}
RIVERS = CONCEPTS[0].concept


def _line(split: str, category: str, i: int, concept: str = RIVERS, **extra: str) -> str:
    return json.dumps({"concept": concept, "split": split, "category": category, "input": f"Say something {i}.",
                       "output": f"The river bank {split} {category} {i}.", **extra})


def _examples(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _full(path: Path) -> Path:
    lines = [_line("train", "positive", i) for i in range(3)]  # one more than the config asks: first 2 used
    lines += [_line("latent", "positive", i) for i in range(2)] + [_line("latent", "negative", i) for i in range(2)]
    lines += [_line("latent", "hard negative", 0, output_concept="bank//a company that keeps money")]
    return _examples(path, lines)


@pytest.fixture
def llm(tmp_path):
    server = RoutingServer().start()
    client = client_for(server.base_url, tmp_path)
    yield client
    client.close()
    server.stop()


def test_written_concepts_skip_the_llm_and_the_others_are_generated(llm, tiny_llama_target, tmp_path):
    concepts = [dataclasses.replace(CONCEPTS[0], genres=("text",)), *CONCEPTS[1:]]
    config = DataGenerationConfig(**SMALL, examples_path=str(_full(tmp_path / "written.jsonl")))
    target = TransformersChatBackend(tiny_llama_target, batch_size=4)
    result = asyncio.new_event_loop().run_until_complete(generate_dataset(
        concepts, config, llm=llm, target=target, out_dir=tmp_path / "out", dataset_config="c", work_dir=tmp_path / "w",
        truncate=tokenizer_truncator(tiny_llama_target.tokenizer)))

    train = read_split(tmp_path / "out", "c", "train")
    written = train[(train.concept_id == 0) & (train.category == "positive")]
    assert list(written.output) == ["The river bank train positive 0.", "The river bank train positive 1."]
    assert set(written.generator_model) == {WRITTEN_MODEL} and written.template_hash.isna().all()
    generated = train[(train.concept_id == 1) & (train.category == "positive")]
    assert len(generated) == 2 and set(generated.generator_model) == {"gpt-4o-mini"}

    latent = read_split(tmp_path / "out", "c", "latent")
    rivers = latent[latent.concept_id == 0]
    assert rivers.groupby("category").size().to_dict() == {"hard negative": 1, "negative": 2, "positive": 2}
    assert set(rivers[rivers.category == "hard negative"].output_concept) == {"bank//a company that keeps money"}
    # The LLM was asked nothing about concept 0: no genre (given by the concept), no rows, no contrast words.
    asked = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert not [entry for entry in asked if entry.get("concept_id") == 0]
    assert next(c.genre for c in read_concepts(tmp_path / "out", "c")) == "text"
    assert result.report["steps"]["positive"]["written"] == 2


def test_too_few_written_rows_fail_before_any_work(llm, tiny_llama_target, tmp_path):
    path = _examples(tmp_path / "few.jsonl", [_line("train", "positive", 0)])
    config = DataGenerationConfig(**SMALL, examples_path=str(path))
    target = TransformersChatBackend(tiny_llama_target, batch_size=4)
    with pytest.raises(WrittenExamplesError, match=r"has 1 written train/positive rows but the data config asks for 2"):
        asyncio.new_event_loop().run_until_complete(generate_dataset(
            CONCEPTS, config, llm=llm, target=target, out_dir=tmp_path / "out", dataset_config="c",
            work_dir=tmp_path / "w"))
    assert not (tmp_path / "w").exists() and not (tmp_path / "ledger.jsonl").exists()


@pytest.mark.parametrize(("line", "message"), [
    ("not json", r"few.jsonl, line 1: not JSON"),
    (json.dumps({"concept": "x", "split": "train", "category": "negative", "input": "i", "output": "o"}),
     r"split/category 'train'/'negative' is not one of"),
    (json.dumps({"concept": "x", "split": "latent", "category": "hard negative", "input": "i", "output": "o"}),
     r"a hard negative needs output_concept 'word//meaning'"),
    (json.dumps({"concept": "x", "split": "train", "category": "positive", "input": "", "output": "o"}),
     r"missing or empty input"),
])
def test_bad_lines_name_the_file_the_line_and_the_fix(tmp_path, line, message):
    with pytest.raises(WrittenExamplesError, match=message):
        WrittenExamples(_examples(tmp_path / "few.jsonl", [line]))


def test_unknown_concepts_and_half_written_latent_rows_are_refused(tmp_path):
    unknown = WrittenExamples(_examples(tmp_path / "a.jsonl", [_line("train", "positive", 0, concept="volcanoes")]))
    with pytest.raises(WrittenExamplesError, match="'volcanoes' is not in the concept list"):
        unknown.check(CONCEPTS, {})
    half = WrittenExamples(_examples(tmp_path / "b.jsonl", [_line("latent", "positive", 0)]))
    with pytest.raises(WrittenExamplesError, match="written latent/positive rows but no latent/negative rows"):
        half.check(CONCEPTS, {})


def test_the_shipped_demo_examples_cover_the_demo_config():
    """The demo's four written concepts have every row demo.yaml asks for; the fifth is left to the LLM."""
    import yaml

    configs = resources.files("axeval") / "configs"
    concepts = load_concepts(Path(str(configs / "demo_concepts.jsonl")))
    data = yaml.safe_load((configs / "demo.yaml").read_text())["data"]
    config = DataGenerationConfig(**data)
    written = WrittenExamples(Path(str(configs / "demo_examples.jsonl")))
    written.check(concepts, {("train", "positive"): config.positives_per_concept,
                             ("latent", "positive"): config.latent_num_of_examples,
                             ("latent", "negative"): config.latent_num_of_examples})
    covered = [c.concept for c in concepts if written.get(c, "train", "positive")]
    assert len(covered) == 4 and len(concepts) == 5
    assert all(c.genres for c in concepts)  # genres given: the LLM is not asked to classify them
