"""Push review records to an Argilla server and pull people's answers back.

The server is any Argilla 2.x: a hosted one through `ARGILLA_API_URL` / `ARGILLA_API_KEY`, or the local
one of `axeval.curation.local_server`. The key is read from the environment (or passed in) and handed to
the client only: it is never logged, written or put in a card.

A push creates the dataset when it is missing and upserts records by their content id: a second push of
the same run updates the suggestions (a re-judged run shows its new ratings) and creates no duplicate;
the upsert sends no responses, and Argilla keeps the responses a record already has.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import pandas as pd

from axdata.errors import InputError
from axeval.curation.records import NOTE_QUESTION, QUESTIONS, ReviewRecord
from axeval.curation.settings import rating_offset, settings_dict
from axeval.judge_templates import CRITERIA

logger = logging.getLogger(__name__)

URL_ENV, KEY_ENV = "ARGILLA_API_URL", "ARGILLA_API_KEY"


def import_argilla() -> Any:
    try:
        import argilla
    except ImportError:
        raise ImportError('axbench curate needs the Argilla client: pip install "axbench[argilla]"') from None
    return argilla


def connect(api_url: str | None = None, api_key: str | None = None) -> Any:
    """An `argilla.Argilla` client for `api_url` (default $ARGILLA_API_URL) with `api_key` (default $ARGILLA_API_KEY)."""
    rg = import_argilla()
    url, key = api_url or os.environ.get(URL_ENV), api_key or os.environ.get(KEY_ENV)
    if not url or not key:
        raise InputError(f"No Argilla server: set {URL_ENV} (e.g. http://127.0.0.1:6900) and {KEY_ENV} (an owner or "
                         "admin API key), or start a local one with `make argilla`.")
    client = rg.Argilla(api_url=url, api_key=key)
    try:
        me = client.me
    except Exception as error:  # noqa: BLE001 - the client raises its own hierarchy; name the server and cause
        raise ConnectionError(f"Argilla at {url} did not accept the API key from {KEY_ENV} or is unreachable "
                              f"({type(error).__name__}); check both.") from None
    logger.info("Connected to Argilla at %s as %s", url, me.username)
    return client


@dataclass
class PushSummary:
    dataset: str
    workspace: str
    url: str
    created: bool  # the dataset was new
    new_records: int
    updated_records: int


def review_settings(client: Any, min_submitted: int = 1) -> Any:
    rg = import_argilla()
    spec = settings_dict(min_submitted)
    settings = rg.Settings._from_dict(spec)  # the same dict `Settings.from_json` reads
    settings.distribution = rg.TaskDistribution(min_submitted=min_submitted)
    return settings


def get_dataset(client: Any, name: str, workspace: str) -> Any | None:
    """The dataset, or None when the workspace has none of that name (without the client's warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return client.datasets(name=name, workspace=workspace)


def push_records(client: Any, records: list[ReviewRecord], name: str, *, workspace: str | None = None,
                 min_submitted: int = 1, with_responses: bool = False) -> PushSummary:
    """Create or update the review dataset `name` and upsert `records` (ids = content ids)."""
    rg = import_argilla()
    workspace = workspace or client.workspaces.default.name
    dataset = get_dataset(client, name, workspace)
    created = dataset is None
    if created:
        dataset = rg.Dataset(name=name, workspace=workspace, settings=review_settings(client, min_submitted),
                             client=client)
        dataset.create()
        existing: set[str] = set()
    else:
        names = {q.name for q in dataset.settings.questions}
        if not set(QUESTIONS) <= names:
            raise InputError(f"Argilla dataset {workspace}/{name} exists but is not an axbench review set (questions "
                             f"{sorted(names)}); choose another --dataset name.")
        existing = {record.id for record in dataset.records(with_suggestions=False, with_responses=False)}
    offset = _offset(dataset)
    users = {user.username: user.id for user in client.users} if with_responses else {}
    batch = []
    for record in records:
        suggestions = [rg.Suggestion(question, value + offset, agent=record.agent)
                       for question, value in record.suggestions.items()]
        responses = []
        for response in record.responses if with_responses else []:
            user_id = users.get(response.get("username", ""), response["user_id"])
            value = response["value"] + offset if response["question"] in QUESTIONS else response["value"]
            responses.append(rg.Response(response["question"], value, user_id=user_id, status=response["status"]))
        batch.append(rg.Record(id=record.id, fields=record.fields, metadata=record.metadata,
                               suggestions=suggestions, responses=responses))
    if batch:
        dataset.records.log(batch)
    new = sum(record.id not in existing for record in records)
    summary = PushSummary(name, workspace, f"{client.api_url.rstrip('/')}/dataset/{dataset.id}/annotation-mode",
                          created, new, len(records) - new)
    logger.info("Argilla %s/%s: %d new record(s), %d updated (suggestions refreshed)", workspace, name, new,
                summary.updated_records)
    return summary


def _offset(dataset: Any) -> int:
    offsets = {rating_offset([int(v) for v in q.values]) for q in dataset.settings.questions if q.name in QUESTIONS}
    if len(offsets) != 1:
        raise InputError(f"Argilla dataset {dataset.name}: the rating questions use different scales {sorted(offsets)}.")
    return offsets.pop()


def pull_labels(client: Any, name: str, *, workspace: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per record × annotator with a submitted response, ratings mapped back to 0–2; and pull info."""
    workspace = workspace or client.workspaces.default.name
    dataset = get_dataset(client, name, workspace)
    if dataset is None:
        raise InputError(f"No Argilla dataset {name!r} in workspace {workspace!r} at {client.api_url}; check "
                         "--dataset/--workspace (`axbench curate send` creates it).")
    offset = _offset(dataset)
    usernames = {str(user.id): user.username for user in client.users}
    rows = []
    for record in dataset.records(with_suggestions=True, with_responses=True):
        by_user: dict[str, dict[str, Any]] = {}
        for response in record.responses:
            if str(response.status) not in ("submitted", "ResponseStatus.submitted"):
                continue
            by_user.setdefault(str(response.user_id), {})[response.question_name] = response.value
        suggestions = {s.question_name: s for s in record.suggestions}
        agent = next((s.agent for s in suggestions.values() if s.agent), "")
        metadata = dict(record.metadata or {})
        for user_id, answers in sorted(by_user.items()):
            row = {"record_id": record.id, "annotator": usernames.get(user_id, user_id)}
            for criterion, question in zip(CRITERIA, QUESTIONS):
                value = answers.get(question)
                row[f"human_{criterion}"] = None if value is None else int(value) - offset
                suggestion = suggestions.get(question)
                row[f"judge_{criterion}"] = None if suggestion is None else int(suggestion.value) - offset
            row["note"] = answers.get(NOTE_QUESTION) or ""
            row |= {key: record.fields.get(key) for key in ("instruction", "concept", "response")}
            row |= {"method": metadata.get("method"), "model": metadata.get("model"),
                    "layer": metadata.get("layer", -1), "factor": metadata.get("factor"),
                    "concept_id": metadata.get("concept_id"), "judge_model": metadata.get("judge_model"),
                    "judge_agent": agent}
            rows.append(row)
    columns = ["record_id", "annotator", *(f"human_{c}" for c in CRITERIA), *(f"judge_{c}" for c in CRITERIA),
               "note", "instruction", "concept", "response", "method", "model", "layer", "factor", "concept_id",
               "judge_model", "judge_agent"]
    labels = pd.DataFrame(rows, columns=columns)
    for column in [*(f"human_{c}" for c in CRITERIA), *(f"judge_{c}" for c in CRITERIA)]:
        labels[column] = labels[column].astype("Int64")
    labels["factor"] = labels["factor"].astype(float)
    info = {"dataset": name, "workspace": workspace, "api_url": client.api_url, "rating_offset": offset}
    logger.info("Pulled %d submitted response row(s) from Argilla %s/%s", len(labels), workspace, name)
    return labels, info
