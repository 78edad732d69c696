"""Review sets in Argilla's own Hub layout, written and read without a server.

```
.argilla/settings.json                 fields, questions, metadata, guidelines, distribution (Settings.from_json)
.argilla/dataset.json                  the dataset's name, guidelines and distribution
data/train-00000-of-00001.parquet      one row per record, the columns `Dataset.records.to_datasets()` writes:
                                       id, status, the fields, the metadata, `<question>.suggestion[.score|.agent]`,
                                       and `<question>.responses[.users|.status]` when responses exist
README.md                              a card (rendered from hub_cards/argilla_review_card.md)
```
This is what `argilla.Dataset.to_hub` publishes, so an exported folder uploaded to a Hub dataset repo loads
into any Argilla server with `argilla.Dataset.from_hub(repo_id, settings="auto"|...)`, and
`axbench curate import` pushes it (from a folder or a repo id) with our own reader.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from axdata.cards import render_card
from axdata.errors import InputError
from axdata.io import atomic_path, atomic_write_text
from axeval.curation.records import METADATA, QUESTIONS, ReviewRecord
from axeval.curation.settings import settings_dict

logger = logging.getLogger(__name__)

SETTINGS_FILE = Path(".argilla") / "settings.json"
DATASET_FILE = Path(".argilla") / "dataset.json"
RECORDS_FILE = Path("data") / "train-00000-of-00001.parquet"
CARD_FILE = Path("README.md")


def records_table(records: list[ReviewRecord]) -> pa.Table:
    """The records as Argilla's flat Hub table."""
    rows = []
    with_responses = any(record.responses for record in records)
    for record in records:
        row: dict[str, Any] = {"id": record.id, "status": "completed" if record.responses else "pending",
                               **record.fields}
        for name in METADATA:
            row[name] = record.metadata.get(name)
        for question in QUESTIONS:
            row[f"{question}.suggestion"] = record.suggestions.get(question)
            row[f"{question}.suggestion.score"] = None
            row[f"{question}.suggestion.agent"] = record.agent
            if with_responses:
                mine = [r for r in record.responses if r["question"] == question]
                row[f"{question}.responses"] = [r["value"] for r in mine]
                row[f"{question}.responses.users"] = [r["user_id"] for r in mine]
                row[f"{question}.responses.status"] = [r["status"] for r in mine]
        rows.append(row)
    types = {"layer": pa.int64(), "concept_id": pa.int64(), "factor": pa.float64()}
    fields = []
    for name in rows[0] if rows else []:
        if name in types:
            fields.append(pa.field(name, types[name]))
        elif name.endswith(".suggestion"):
            fields.append(pa.field(name, pa.int64()))
        elif name.endswith(".suggestion.score"):
            fields.append(pa.field(name, pa.float64()))
        elif name.endswith(".responses"):
            fields.append(pa.field(name, pa.list_(pa.int64())))
        elif name.endswith((".responses.users", ".responses.status")):
            fields.append(pa.field(name, pa.list_(pa.string())))
        else:
            fields.append(pa.field(name, pa.string()))
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def export_review(records: list[ReviewRecord], out_dir: str | Path, name: str, *, min_submitted: int = 1,
                  source: str = "") -> Path:
    """Write `records` and the review settings in Argilla's Hub layout into `out_dir` (created; must be empty)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; export into a new folder.")
    if not records:
        raise InputError("No records to export.")
    settings = settings_dict(min_submitted)
    atomic_write_text(out / SETTINGS_FILE, json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
    dataset = {"name": name, "guidelines": settings["guidelines"], "allow_extra_metadata": False,
               "distribution": settings["distribution"], "status": "ready"}
    atomic_write_text(out / DATASET_FILE, json.dumps(dataset, indent=2, ensure_ascii=False) + "\n")
    table = records_table(records)
    with atomic_path(out / RECORDS_FILE) as tmp:
        pq.write_table(table, tmp)
    methods = sorted({str(r.metadata.get("method")) for r in records})
    judges = sorted({r.agent for r in records})
    atomic_write_text(out / CARD_FILE, render_card(
        "argilla_review_card.md", name=name, n_records=len(records), methods=methods, agents=judges,
        questions=[q["name"] for q in settings["questions"]], fields=[f["name"] for f in settings["fields"]],
        metadata=list(METADATA), min_submitted=min_submitted, source=source,
        card_metadata={"tags": ["argilla", "axbench", "human-feedback", "llm-as-a-judge"],
                       "configs": [{"config_name": "default",
                                    "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]}))
    logger.info("Exported %d review records in Argilla's Hub layout to %s", len(records), out)
    return out


def read_review(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any], list[ReviewRecord]]:
    """(settings, dataset, records) of a folder in Argilla's Hub layout (ours or `Dataset.to_hub`'s)."""
    root = Path(folder)
    for path in (SETTINGS_FILE, DATASET_FILE):
        if not (root / path).is_file():
            raise FileNotFoundError(f"{root} has no {path}; pass a folder in Argilla's Hub layout (written by "
                                    "`axbench curate export` or `argilla.Dataset.to_hub`).")
    settings = json.loads((root / SETTINGS_FILE).read_text(encoding="utf-8"))
    dataset = json.loads((root / DATASET_FILE).read_text(encoding="utf-8"))
    shards = sorted((root / "data").glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{root}/data holds no parquet records.")
    frame = pd.concat([pq.read_table(path).to_pandas() for path in shards], ignore_index=True)
    records = []
    for row in frame.to_dict("records"):
        agent = next((row.get(f"{q}.suggestion.agent") for q in QUESTIONS if row.get(f"{q}.suggestion.agent")), "")
        responses = []
        for question in QUESTIONS:
            values = row.get(f"{question}.responses")
            if values is None:
                continue
            for value, user, status in zip(values, row[f"{question}.responses.users"],
                                           row[f"{question}.responses.status"]):
                responses.append({"question": question, "value": int(value), "user_id": user, "status": status})
        metadata = {name: _plain(row.get(name)) for name in METADATA if _plain(row.get(name)) is not None}
        records.append(ReviewRecord(
            id=str(row["id"]),
            fields={name: str(row[name]) for name in ("instruction", "concept", "response")},
            metadata=metadata,
            suggestions={q: int(row[f"{q}.suggestion"]) for q in QUESTIONS
                         if _plain(row.get(f"{q}.suggestion")) is not None},
            agent=str(agent),
            responses=responses,
        ))
    return settings, dataset, records


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value
