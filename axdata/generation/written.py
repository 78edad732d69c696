"""Examples written by people, used in place of LLM generation for the concepts they cover.

A `.jsonl` file, one example per line:

    {"concept": "references to the ocean and sea creatures", "split": "train", "category": "positive",
     "input": "Describe your ideal weekend.", "output": "My ideal weekend starts at the beach, ..."}

- `concept`: the concept's text, as in the concept file (case and spacing are ignored);
- `split` / `category`: `train` / `positive` (training positives), or `latent` / `positive`, `negative` or
  `hard negative` (detection-eval rows; a hard negative also names its `output_concept`, `word//meaning`);
- `input`: the instruction the output answers; `output`: the text.

For a concept with written rows of a kind, generation uses them (the first N the config asks for, in file
order) and asks the LLM nothing for that kind; a concept with none is generated as usual, so one dataset can
mix curated and generated concepts. Shared negatives and preference losers are always the target model's own
answers. Too few written rows for what the config asks is an error before any work starts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from axdata.concepts import Concept, normalise
from axdata.errors import InputError
from axdata.hashing import content_hash

WRITTEN_MODEL = "written"  # generator_model of written rows
KINDS = {("train", "positive"), ("latent", "positive"), ("latent", "negative"), ("latent", "hard negative")}
_REQUIRED = ("concept", "split", "category", "input", "output")


class WrittenExamplesError(InputError):
    """The written-examples file cannot be used; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class WrittenExample:
    input: str
    output: str
    output_concept: str | None = None  # hard negatives: "word//meaning"


class WrittenExamples:
    """The examples of one file, grouped by (concept, split, category) in file order."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._rows: dict[tuple[str, str, str], list[WrittenExample]] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as err:
            raise WrittenExamplesError(f"{self.path}: cannot read the written examples ({err.strerror}). Fix: "
                                       "point data.examples_path at an existing .jsonl file.") from None
        self._fingerprint = content_hash(text)
        for line, raw in enumerate(text.splitlines(), start=1):
            if raw.strip():
                self._add(line, raw)

    def _fail(self, line: int, problem: str) -> WrittenExamplesError:
        return WrittenExamplesError(f"{self.path}, line {line}: {problem}. Fix: each line is a JSON object with "
                                    f"{', '.join(_REQUIRED)} (and output_concept for a hard negative); see "
                                    "axdata.generation.written.")

    def _add(self, line: int, raw: str) -> None:
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise self._fail(line, f"not JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise self._fail(line, "not a JSON object")
        missing = [key for key in _REQUIRED if not isinstance(record.get(key), str) or not record[key].strip()]
        if missing:
            raise self._fail(line, f"missing or empty {', '.join(missing)}")
        kind = (record["split"], record["category"])
        if kind not in KINDS:
            raise self._fail(line, f"split/category {kind[0]!r}/{kind[1]!r} is not one of "
                             + ", ".join(f"{s}/{c}" for s, c in sorted(KINDS)))
        output_concept = record.get("output_concept")
        if kind[1] == "hard negative" and (not isinstance(output_concept, str) or "//" not in output_concept):
            raise self._fail(line, "a hard negative needs output_concept 'word//meaning'")
        key = (normalise(record["concept"]), *kind)
        self._rows.setdefault(key, []).append(WrittenExample(record["input"], record["output"], output_concept))

    def fingerprint(self) -> str:
        return self._fingerprint

    def concepts(self) -> set[str]:
        return {key[0] for key in self._rows}

    def get(self, concept: Concept, split: str, category: str) -> list[WrittenExample] | None:
        """The written rows of this kind for the concept, or None when it has none (then generate)."""
        return self._rows.get((normalise(concept.concept), split, category))

    def check(self, concepts: Sequence[Concept], wanted: dict[tuple[str, str], int]) -> None:
        """Every written kind a config asks for has enough rows; every written concept is in the concept list."""
        known = {normalise(concept.concept) for concept in concepts}
        for concept_text in sorted(self.concepts() - known):
            raise WrittenExamplesError(f"{self.path}: concept {concept_text!r} is not in the concept list. Fix: "
                                       "spell it as in the concept file, or add it there.")
        for concept in concepts:
            latent = {category: self.get(concept, "latent", category) is not None for category in ("positive", "negative")}
            if latent["positive"] != latent["negative"]:
                have, lack = ("positive", "negative") if latent["positive"] else ("negative", "positive")
                raise WrittenExamplesError(
                    f"{self.path}: concept {concept.concept!r} has written latent/{have} rows but no latent/{lack} "
                    f"rows. Fix: write both (detection needs positives and negatives from the same source), or "
                    "neither (then the LLM writes both).")
            for (split, category), n in wanted.items():
                rows = self.get(concept, split, category)
                if rows is not None and len(rows) < n:
                    raise WrittenExamplesError(
                        f"{self.path}: concept {concept.concept!r} has {len(rows)} written {split}/{category} "
                        f"rows but the data config asks for {n}. Fix: write {n - len(rows)} more, or lower "
                        "num_of_examples / latent_num_of_examples.")
