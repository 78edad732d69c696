"""Concept lists: read csv / txt / jsonl (AxBench `metadata.jsonl`) / Neuronpedia exports, sample, write.

Formats, chosen by the file suffix:
- `.csv`: rows `concept,ref` (ref optional); a header row `concept,ref` is optional (AxBench's has none).
- `.txt`: one concept per line; blank lines are skipped.
- `.jsonl`: AxBench `metadata.jsonl` lines `{"concept_id", "concept", "ref", "concept_genres_map"}`;
  other keys are kept in `Concept.extra` and written back. `concept_type` is `"topic"` (the default: AxBench's
  concepts) or `"rule"` (an instruction such as "write in capital letters", judged by rule following; a rule
  may name a programmatic `checker`, see `axeval.rules`). In a list that holds rules, every line states its
  type. The packaged rule list is `load_rule_concepts()` (`axdata/resources/rules.jsonl`).
- `.json`: a Neuronpedia explanations export, a list of `{"modelId", "layer", "index", "description"}`;
  the first description per feature is kept, ref = https://www.neuronpedia.org/{modelId}/{layer}/{index}.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import json
import logging
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axdata.errors import InputError
from axdata.io import atomic_write_text
from axdata.schema import GENRES

logger = logging.getLogger(__name__)

NEURONPEDIA_URL = "https://www.neuronpedia.org/{model_id}/{layer}/{index}"
_METADATA_KEYS = ("concept_id", "concept", "ref", "concept_genres_map")
_NEURONPEDIA_KEYS = ("modelId", "layer", "index", "description")
CONCEPT_TYPES = ("topic", "rule")
RULES_RESOURCE = "rules.jsonl"  # in axdata/resources


class ConceptFileError(InputError):
    """A concept file cannot be read; the message names the file, the line, the problem and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str, at: int | str | None = None) -> None:
        self.path = Path(path)
        self.problem, self.fix = problem, fix
        self.at = f"line {at}" if isinstance(at, int) else at  # "line 3", or "explanation 7" in JSON lists
        where = f"{path}, {self.at}" if self.at else str(path)
        super().__init__(f"{where}: {problem}. Fix: {fix}.")

    def named(self, source: str | Path) -> ConceptFileError:
        """The same error naming the file as `source` (e.g. its path in a Hub repo, not a download cache's)."""
        return ConceptFileError(source, self.problem, self.fix, self.at)


@dataclass(frozen=True)
class Concept:
    """One concept: a stable id, its natural-language description, where it came from, its genres."""

    concept_id: int
    concept: str
    ref: str | None = None
    genres: tuple[str, ...] | None = None  # AxBench's genre list; the first one is "the" genre
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    concept_type: str = "topic"  # one of CONCEPT_TYPES

    @property
    def genre(self) -> str | None:
        return self.genres[0] if self.genres else None

    @property
    def checker(self) -> str | None:
        """The `axeval.rules` checker spec of a rule concept, if its list names one."""
        return self.extra.get("checker")

    def to_metadata(self, *, with_type: bool = False) -> dict[str, Any]:
        """The AxBench `metadata.jsonl` record of this concept; `concept_type` is written when it is not the
        default "topic" or when `with_type` (a list holding rules must state every line's type)."""
        record: dict[str, Any] = {"concept_id": self.concept_id, "concept": self.concept, "ref": self.ref}
        if self.genres is not None:
            record["concept_genres_map"] = {self.concept: list(self.genres)}
        if with_type or self.concept_type != "topic":
            record["concept_type"] = self.concept_type
        return {**record, **self.extra}


@dataclass(frozen=True)
class _Entry:
    where: str  # "line 3" or "explanation 7": for messages
    concept: str
    ref: str | None = None
    concept_id: int | None = None
    genres: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    concept_type: str | None = None  # None: the line does not say (a topic, unless the list holds rules)


def load_concepts(path: str | Path, *, max_concepts: int | None = None, seed: int = 42,
                  dedupe: bool = True) -> list[Concept]:
    """Read a concept file (see the module docstring for the formats) into concepts sorted by id.

    Ids come from the file where it has them (jsonl), otherwise they are the positions after sampling.
    With `max_concepts`, the list is shuffled with `random.Random(seed)` — the permutation AxBench got
    from `random.shuffle` after seeding with the same seed — and the first `max_concepts` are kept, so
    a smaller sample is a prefix of a larger one. With `dedupe`, a concept whose description equals an
    earlier one up to case and whitespace is dropped (and logged); turn it off to keep an id-bearing
    file whole, as imports must.
    """
    path = Path(path)
    if max_concepts is not None and max_concepts < 1:
        raise InputError(f"max_concepts must be ≥ 1 or None, got {max_concepts}.")
    readers = {".csv": _read_csv, ".txt": _read_txt, ".jsonl": _read_jsonl, ".json": _read_neuronpedia}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ConceptFileError(path, f"unknown concept file type {path.suffix!r}",
                               f"use one of {', '.join(readers)} (see axdata.concepts)")
    entries = reader(path, _read_text(path))
    if not entries:
        raise ConceptFileError(path, "the file holds no concepts", "add at least one concept")
    _check_ids(path, entries)
    _check_types(path, entries)
    if max_concepts is not None:
        random.Random(seed).shuffle(entries)
    selected = _dedupe(path, entries, max_concepts) if dedupe else entries[:max_concepts]
    concepts = [
        Concept(entry.concept_id if entry.concept_id is not None else position, entry.concept, entry.ref,
                entry.genres, entry.extra, entry.concept_type or "topic")
        for position, entry in enumerate(selected)
    ]
    return sorted(concepts, key=lambda concept: concept.concept_id)


def write_concepts_jsonl(path: str | Path, concepts: Iterable[Concept]) -> None:
    """Write concepts as AxBench `metadata.jsonl` (one JSON object per line), atomically. A list of topics
    only is written as AxBench's (no `concept_type`); one holding rules states every line's type, so that
    it reads back."""
    concepts = list(concepts)
    with_type = any(concept.concept_type != "topic" for concept in concepts)
    lines = [json.dumps(concept.to_metadata(with_type=with_type), ensure_ascii=False) + "\n"
             for concept in concepts]
    atomic_write_text(path, "".join(lines))


def load_rule_concepts() -> list[Concept]:
    """The rule concepts shipped with axbench (`axdata/resources/rules.jsonl`), whole and in id order."""
    resource = importlib.resources.files("axdata") / "resources" / RULES_RESOURCE
    with importlib.resources.as_file(resource) as path:
        return load_concepts(path, dedupe=False)


def normalise(concept: str) -> str:
    """The de-duplication key of a description: case-folded, whitespace runs collapsed."""
    return " ".join(concept.casefold().split())


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConceptFileError(path, "no such file", "check the path")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConceptFileError(path, f"not valid UTF-8 (byte {error.start}: {error.reason})",
                               "re-save the file as UTF-8", line) from None
    if not text.strip():
        raise ConceptFileError(path, "the file is empty", "add at least one concept")
    return text


_HEADER_WORDS = {"concept", "ref", "reference", "description", "explanation", "id", "url", "link", "feature"}
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def _read_csv(path: Path, text: str) -> list[_Entry]:
    reader = csv.reader(io.StringIO(text, newline=""))
    entries: list[_Entry] = []
    try:
        for row in reader:
            _csv_row(path, reader.line_num, row, entries)
    except csv.Error as error:  # e.g. a field over the csv module's 128 KiB limit, a stray quote
        raise ConceptFileError(path, f"not a readable csv ({error})",
                               "write one concept per line as concept,ref (quote descriptions with commas)",
                               reader.line_num) from None
    return entries


def _csv_row(path: Path, line: int, row: list[str], entries: list[_Entry]) -> None:
    """Append row `line` of a concept csv to `entries` (blank rows and a `concept[,ref]` header skipped)."""
    if not any(cell.strip() for cell in row):
        return
    cells = [cell.strip() for cell in row]
    names = [cell.lower() for cell in cells]
    if line == 1 and names in (["concept"], ["concept", "ref"]):
        return
    if line == 1 and set(names) & _HEADER_WORDS:
        raise ConceptFileError(path, f"the header {','.join(cells)!r} is not 'concept' or 'concept,ref'",
                               "make the concept description the first column (header 'concept,ref')", line)
    if len(cells) > 2:
        raise ConceptFileError(path, f"{len(cells)} fields, expected 'concept,ref'",
                               "quote descriptions that contain commas, or drop the extra columns", line)
    if not cells[0]:
        raise ConceptFileError(path, "empty concept", "write a description in the first column", line)
    if _URL.match(cells[0]):
        raise ConceptFileError(path, f"the concept {cells[0][:80]!r} is a URL",
                               "put the description first and the Neuronpedia URL second (concept,ref)", line)
    ref = cells[1] if len(cells) == 2 and cells[1] else None
    entries.append(_Entry(f"line {line}", cells[0], ref))


def _read_txt(path: Path, text: str) -> list[_Entry]:
    entries = []
    for line, raw in enumerate(text.splitlines(), start=1):
        concept = raw.strip()
        if not concept:
            continue
        if concept.startswith(("http://", "https://")):
            raise ConceptFileError(path, "a URL instead of a description", "list descriptions, or export the "
                                   "features' explanations from Neuronpedia as a .json file", line)
        entries.append(_Entry(f"line {line}", concept))
    return entries


def _read_jsonl(path: Path, text: str) -> list[_Entry]:
    entries = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ConceptFileError(path, f"invalid JSON ({error.msg})",
                                   "write one complete JSON object per line (a truncated file?)", line) from None
        if not isinstance(record, dict):
            raise ConceptFileError(path, f"a JSON {type(record).__name__}, expected an object",
                                   f"write objects with the keys {', '.join(_METADATA_KEYS)}", line)
        entries.append(_metadata_entry(path, line, record))
    return entries


def _metadata_entry(path: Path, line: int, record: dict[str, Any]) -> _Entry:
    concept = record.get("concept")
    if not isinstance(concept, str):
        raise ConceptFileError(path, "no 'concept' string", f"give each line the keys {', '.join(_METADATA_KEYS)}",
                               line)
    if not concept.strip():
        raise ConceptFileError(path, "empty concept", "write a description in 'concept'", line)
    concept_id = record.get("concept_id")
    if concept_id is not None and (type(concept_id) is not int or concept_id < 0):
        raise ConceptFileError(path, f"concept_id {concept_id!r} is not an integer ≥ 0",
                               "use 0-based integer ids", line)
    ref = record.get("ref")
    if ref is not None and not isinstance(ref, str):
        raise ConceptFileError(path, f"ref {ref!r} is not a string", "write the reference URL as a string", line)
    concept_type = record.get("concept_type")
    if concept_type is not None and concept_type not in CONCEPT_TYPES:
        raise ConceptFileError(path, f"concept_type {concept_type!r} is not one of {', '.join(CONCEPT_TYPES)}",
                               'write "topic" or "rule" (or leave it out for a topic)', line)
    checker = record.get("checker")
    if checker is not None and (concept_type != "rule" or not isinstance(checker, str) or not checker.strip()):
        raise ConceptFileError(path, f"checker {checker!r} on a concept that is not a rule with a checker name",
                               'give checkers only to lines with "concept_type": "rule", as a name such as '
                               '"all_capital" (see axeval.rules)', line)
    extra = {key: value for key, value in record.items() if key not in (*_METADATA_KEYS, "concept_type")}
    return _Entry(f"line {line}", concept, ref, concept_id, _genres(path, line, concept, record), extra,
                  concept_type)


def _genres(path: Path, line: int, concept: str, record: dict[str, Any]) -> tuple[str, ...] | None:
    genre_map = record.get("concept_genres_map")
    if not genre_map:
        return None
    genres = genre_map.get(concept) if isinstance(genre_map, dict) else None
    if not isinstance(genres, list) or not genres:
        raise ConceptFileError(path, "concept_genres_map has no genre list for the concept",
                               'key it by the concept text: {"<concept>": ["text"]}', line)
    unknown = [genre for genre in genres if genre not in GENRES]
    if unknown:
        raise ConceptFileError(path, f"unknown genres {unknown}", f"use genres from {GENRES}", line)
    return tuple(genres)


def _read_neuronpedia(path: Path, text: str) -> list[_Entry]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConceptFileError(path, f"invalid JSON ({error.msg})", "re-export the explanations from "
                               "Neuronpedia (the file looks truncated or edited)", error.lineno) from None
    if not isinstance(items, list):
        raise ConceptFileError(path, f"a JSON {type(items).__name__}, expected a list of explanations",
                               "use a Neuronpedia explanations export, or .jsonl for AxBench metadata", 1)
    entries, seen, repeats = [], set(), 0
    for position, item in enumerate(items):
        missing = [key for key in _NEURONPEDIA_KEYS if not isinstance(item, dict) or key not in item]
        if missing:
            raise ConceptFileError(path, f"explanation {position} lacks {', '.join(missing)}",
                                   "use a Neuronpedia explanations export", _item_line(text, position))
        description = item["description"].strip() if isinstance(item["description"], str) else ""
        if not description:
            raise ConceptFileError(path, f"explanation {position} has an empty description",
                                   "remove it or give it a description", _item_line(text, position))
        if not (isinstance(item["modelId"], str) and isinstance(item["layer"], str)
                and isinstance(item["index"], (int, str)) and not isinstance(item["index"], bool)):
            raise ConceptFileError(path, f"explanation {position} has a modelId, layer or index of the wrong type "
                                   "(modelId and layer are text, index a number)",
                                   "use a Neuronpedia explanations export", _item_line(text, position))
        feature = (item["modelId"], item["layer"], str(item["index"]))
        if feature in seen:
            repeats += 1
            continue
        seen.add(feature)
        ref = NEURONPEDIA_URL.format(model_id=feature[0], layer=feature[1], index=feature[2])
        entries.append(_Entry(f"explanation {position}", description, ref))
    if repeats:
        logger.info("%s: kept the first description of each feature; %d later descriptions ignored", path, repeats)
    return entries


def _item_line(text: str, position: int) -> int:
    """Line where item `position` of the (valid) JSON array in `text` starts; only for error messages."""
    decoder, index = json.JSONDecoder(), text.index("[") + 1
    for _ in range(position + 1):
        while text[index] in " \t\r\n,":
            index += 1
        start = index
        _, index = decoder.raw_decode(text, index)
    return _line_at(text, start)


def _line_at(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _check_ids(path: Path, entries: list[_Entry]) -> None:
    with_ids = [entry for entry in entries if entry.concept_id is not None]
    if with_ids and len(with_ids) != len(entries):
        first = next(entry for entry in entries if entry.concept_id is None)
        raise ConceptFileError(path, "some concepts have a concept_id and this one has none",
                               "give every concept an id, or none of them", first.where)
    first_seen: dict[int, str] = {}
    for entry in with_ids:
        assert entry.concept_id is not None
        if entry.concept_id in first_seen:
            raise ConceptFileError(path, f"concept_id {entry.concept_id} is already used on "
                                   f"{first_seen[entry.concept_id]}", "give each concept its own id", entry.where)
        first_seen[entry.concept_id] = entry.where


def _check_types(path: Path, entries: list[_Entry]) -> None:
    """A list that holds rules must type every line: a line without a type would silently become a topic
    and be judged as one."""
    rule = next((entry for entry in entries if entry.concept_type == "rule"), None)
    untyped = next((entry for entry in entries if entry.concept_type is None), None)
    if rule is not None and untyped is not None:
        raise ConceptFileError(path, f"the list mixes rules (first on {rule.where}) with concepts that have no "
                               "concept_type", 'give every line "concept_type": "topic" or "rule"', untyped.where)


def _dedupe(path: Path, entries: list[_Entry], limit: int | None) -> list[_Entry]:
    kept: dict[str, _Entry] = {}
    for entry in entries:
        if limit is not None and len(kept) == limit:
            break
        key = normalise(entry.concept)
        if key in kept:
            logger.warning("%s: dropped duplicate concept %r (%s), same as %s", path, entry.concept,
                           entry.where, kept[key].where)
            continue
        kept[key] = entry
    return list(kept.values())
