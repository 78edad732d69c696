"""`axbench curate` against a real Argilla server: send, bulk annotator responses, idempotent re-send, fetch,
agreement checked against hand-computed values, Hub-layout import, and no API key anywhere on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from curation_helpers import judged_frame, write_judged_run
from fixtures_argilla import argilla_server  # noqa: F401 - the session fixture
from typer.testing import CliRunner

from axeval.cli import app
from axeval.curation.argilla_io import connect, get_dataset
from axeval.curation.records import build_records, load_judged_run

pytestmark = pytest.mark.slow

# Four generations with designed judge ratings (concept, instruction, fluency).
JUDGE = {"concept": [0, 1, 2, 2], "instruction": [2, 2, 2, 2], "fluency": [2, 2, 1, 0]}
# annotator1 differs from the judge on one concept rating; annotator2 agrees everywhere.
HUMANS = {
    "annotator1": {"concept": [0, 1, 2, 1], "instruction": [2, 2, 2, 2], "fluency": [2, 2, 1, 0]},
    "annotator2": {"concept": [0, 1, 2, 2], "instruction": [2, 2, 2, 2], "fluency": [2, 2, 1, 0]},
}


def _judged(concept: list[int] | None = None) -> pd.DataFrame:
    frame = judged_frame(n_prompts=1)
    frame = frame[frame["method"] == "diffmean"].head(4).reset_index(drop=True)
    for criterion, values in JUDGE.items():
        frame[f"{criterion}_rating"] = [float(v) for v in (concept if concept and criterion == "concept" else values)]
    return frame


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), terminal_width=200)
    assert result.exit_code == 0, f"{args}: {result.output}"
    return result.output


def _log_responses(client, name: str, workspace: str) -> None:
    """Annotators' answers logged in bulk (the path that works with the in-memory search engine)."""
    import argilla as rg

    users = {user.username: user.id for user in client.users}
    dataset = get_dataset(client, name, workspace)
    order = {record.id: index for index, record in enumerate(build_records(load_judged_run(RUN[0])))}
    batch = []
    for record in dataset.records(with_suggestions=True):
        index = order[record.id]
        responses = [rg.Response(f"{criterion}_rating", ratings[criterion][index], user_id=users[annotator],
                                 status="submitted")
                     for annotator, ratings in HUMANS.items() for criterion in ratings]
        if index == 3:
            responses.append(rg.Response("note", "the judge is too generous on the concept",
                                         user_id=users["annotator1"], status="submitted"))
        batch.append(rg.Record(id=record.id, fields=dict(record.fields), metadata=dict(record.metadata),
                               responses=responses))
    dataset.records.log(batch)


RUN: list[Path] = []


def test_send_annotate_fetch_agreement_against_a_real_server(argilla_server, tmp_path, monkeypatch):  # noqa: F811
    server = argilla_server
    monkeypatch.setenv("ARGILLA_API_URL", server.api_url)
    monkeypatch.setenv("ARGILLA_API_KEY", server.owner.api_key)
    run = write_judged_run(tmp_path / "run", _judged())
    RUN[:] = [run]

    # Send: a new dataset with four records, 0–2 ratings accepted as they are.
    out = _invoke("curate", "send", str(run), "--dataset", "review", "--workspace", server.workspace,
                  "--min-submitted", "2")
    assert "4 new record(s), 0 updated (dataset created)" in out
    client = connect()
    dataset = get_dataset(client, "review", server.workspace)
    questions = {q.name: q for q in dataset.settings.questions}
    assert sorted(int(v) for v in questions["concept_rating"].values) == [0, 1, 2]  # the server accepts 0
    assert dataset.settings.distribution.min_submitted == 2
    assert "0: the concept does not appear at all." in dataset.settings.guidelines
    first = next(iter(dataset.records(with_suggestions=True)))
    agent = first.suggestions["concept_rating"].agent
    assert agent.startswith("axbench-judge:stand-in-judge:")
    assert {"method", "model", "layer", "factor", "concept_id", "judge_model"} <= set(first.metadata)

    _log_responses(client, "review", server.workspace)

    # Re-send with one changed judge rating: suggestions update, no duplicate, responses untouched.
    write_judged_run(run, _judged(concept=[1, 1, 2, 2]))
    out = _invoke("curate", "send", str(run), "--dataset", "review", "--workspace", server.workspace)
    assert "0 new record(s), 4 updated" in out
    dataset = get_dataset(client, "review", server.workspace)
    records = list(dataset.records(with_suggestions=True, with_responses=True))
    assert len(records) == 4
    assert sorted(int(r.suggestions["concept_rating"].value) for r in records) == [1, 1, 2, 2]
    assert all(len(list(r.responses)) == 6 or len(list(r.responses)) == 7 for r in records)
    write_judged_run(run, _judged())
    _invoke("curate", "send", str(run), "--dataset", "review", "--workspace", server.workspace)

    # Fetch: one row per record × annotator, ratings on 0–2, the note kept.
    labels_dir = run / "curation" / "review"
    out = _invoke("curate", "fetch", "review", "--out", str(labels_dir), "--workspace", server.workspace)
    assert "8 response row(s) of 4 record(s)" in out
    labels = pd.read_parquet(labels_dir / "data" / "train-00000-of-00001.parquet")
    assert sorted(labels["annotator"].unique()) == ["annotator1", "annotator2"]
    assert labels["note"].str.contains("too generous").sum() == 1
    info = json.loads((labels_dir / "curation.json").read_text())
    assert info["rating_offset"] == 0 and info["api_url"] == server.api_url

    # Agreement, against values computed by hand (see the comments).
    result = json.loads(_invoke("curate", "agreement", str(labels_dir), "--json"))
    concept = result["criteria"]["concept"]
    # judge (0,1,2,2)×2 vs human (0,1,2,1, 0,1,2,2): one disagreement of one step (w=1/4) in 8 → 1/32;
    # marginals judge (.25,.25,.5), human (.25,.375,.375) → expected 0.328125; κ = 1 - (1/32)/0.328125 = 19/21.
    assert concept["kappa"] == pytest.approx(19 / 21)
    assert concept["exact"] == pytest.approx(7 / 8)
    assert concept["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 1, 3]]
    assert result["criteria"]["instruction"]["kappa"] is None  # every rating 2: κ undefined
    assert "constant" in result["criteria"]["instruction"]["kappa_reason"]
    assert result["criteria"]["fluency"]["kappa"] == pytest.approx(1.0)
    # Between annotators: (0,1,2,1) vs (0,1,2,2): 1/16 observed, 0.3125 expected → κ = 0.8; 3 of 4 agree.
    inter = result["annotators"]["concept"]
    assert inter["mean_pairwise_kappa"] == pytest.approx(0.8) and inter["exact"] == pytest.approx(0.75)
    assert result["n_records"] == 4 and result["n_comparisons"] == 8

    # The report finds the curation and shows it.
    from axeval.report import build_report

    report = build_report(run, n_resamples=20)
    markdown = report.files["markdown"].read_text()
    assert "Judge–human agreement: review" in markdown
    assert report.files["plot_agreement_review"].is_file()

    # Hub layout: export without the server, import into it under a new name, responses and all.
    export_dir = tmp_path / "export"
    _invoke("curate", "export", str(run), "--out", str(export_dir), "--dataset", "review-copy")
    out = _invoke("curate", "import", str(export_dir), "--workspace", server.workspace)
    assert "review-copy: 4 new record(s)" in out
    assert len(list(get_dataset(client, "review-copy", server.workspace).records)) == 4

    # The key never reaches disk or output.
    key = server.owner.api_key
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    assert key not in out


def test_argillas_own_from_hub_loads_our_export(argilla_server, tmp_path, hub_env, monkeypatch):  # noqa: F811
    """The exported folder, pushed to a Hub repo, loads with argilla.Dataset.from_hub on any server."""
    import argilla as rg

    server = argilla_server
    monkeypatch.setenv("ARGILLA_API_URL", server.api_url)
    monkeypatch.setenv("ARGILLA_API_KEY", server.owner.api_key)
    run = write_judged_run(tmp_path / "run", _judged())
    repo_id = hub_env.repo_id("review-set")
    _invoke("curate", "export", str(run), "--out", str(tmp_path / "export"), "--dataset", "from-hub",
            "--push-to", repo_id)
    client = connect()
    dataset = rg.Dataset.from_hub(repo_id, name="from-hub", workspace=server.workspace, client=client,
                                  settings="auto")
    records = list(dataset.records(with_suggestions=True))
    assert len(records) == 4
    assert {int(r.suggestions["concept_rating"].value) for r in records} == {0, 1, 2}
    # and our own importer reads the same repo
    out = _invoke("curate", "import", repo_id, "--dataset", "from-hub-2", "--workspace", server.workspace)
    assert "4 new record(s)" in out
