"""The review dataset's settings as plain data, in the JSON shape of Argilla's `.argilla/settings.json`.

One definition serves both paths: `argilla_io` turns it into `argilla.Settings` for a server, and
`hub_layout` writes it to disk for the Hub, without a server.

Rating questions use the judge's own 0–2 scale: argilla-server 2.8 accepts 0 as a rating value
(checked against a real server in tests/test_curation_server.py). A server that only accepts 1–10 needs
`rating_offset=1` (values 1–3); pulls read the offset back from the dataset's question values, so the
labels are always on 0–2.
"""

from __future__ import annotations

from typing import Any

from axdata.errors import InputError
from axeval.curation.records import GUIDELINES, NOTE_QUESTION, QUESTION_TITLES, QUESTIONS, RATING_VALUES

FIELD_TITLES = {"instruction": "Instruction", "concept": "Concept the model was steered towards",
                "response": "Response (the steered generation)"}
METADATA_TYPES = {"method": "terms", "model": "terms", "layer": "integer", "factor": "float",
                  "concept_id": "integer", "judge_model": "terms"}


def settings_dict(min_submitted: int = 1, rating_offset: int = 0) -> dict[str, Any]:
    """The settings of a review dataset (fields, questions, metadata, guidelines, distribution)."""
    if min_submitted < 1:
        raise InputError(f"--min-submitted {min_submitted}: a record needs at least 1 submitted response.")
    fields = [{"name": name, "title": title, "required": True, "description": None, "type": "text",
               "settings": {"type": "text", "use_markdown": name == "response"}}
              for name, title in FIELD_TITLES.items()]
    questions = [{"name": name, "title": QUESTION_TITLES[name], "description": _rating_help(rating_offset),
                  "required": True, "type": "rating",
                  "settings": {"type": "rating", "options": [{"value": v + rating_offset} for v in RATING_VALUES]}}
                 for name in QUESTIONS]
    questions.append({"name": NOTE_QUESTION, "title": "Note (optional): anything worth telling us",
                      "description": None, "required": False, "type": "text",
                      "settings": {"type": "text", "use_markdown": False}})
    metadata = []
    for name, kind in METADATA_TYPES.items():
        settings: dict[str, Any] = {"type": kind, "visible_for_annotators": True}
        settings |= {"values": None} if kind == "terms" else {"min": None, "max": None}
        metadata.append({"name": name, "title": name, "visible_for_annotators": True, "settings": settings})
    return {"guidelines": GUIDELINES, "questions": questions, "fields": fields, "vectors": [], "metadata": metadata,
            "allow_extra_metadata": False, "distribution": {"strategy": "overlap", "min_submitted": min_submitted},
            "mapping": None}


def _rating_help(offset: int) -> str:
    if offset == 0:
        return "0, 1 or 2 as in the guidelines."
    return f"Values {offset}–{offset + 2} stand for the guidelines' 0–2 (this server does not accept 0)."


def rating_offset(question_values: list[int]) -> int:
    """The offset of a rating question whose values are 0–2 shifted: min(values)."""
    values = sorted(question_values)
    if len(values) != len(RATING_VALUES) or values != [values[0] + v for v in RATING_VALUES]:
        raise InputError(f"A rating question has values {values}; an axbench review question has three consecutive "
                         "values (0–2, or shifted). Was this dataset sent by `axbench curate send`?")
    return values[0]
