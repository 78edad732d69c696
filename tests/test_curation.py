"""axeval.curation without a server: sampling, record ids, agreement math, Hub layout, labels folder, report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from curation_helpers import judged_frame, write_judged_run
from typer.testing import CliRunner

from axeval.cli import app
from axeval.curation.agreement import inter_annotator, judge_human_agreement, pair_stats, score_stats
from axeval.curation.hub_layout import SETTINGS_FILE, export_review, read_review
from axeval.curation.labels import AGREEMENT_FILE, CONFUSION_PLOT, read_labels, write_labels
from axeval.curation.records import build_records, load_judged_run, record_id, sample_judged, stratify
from axeval.curation.settings import rating_offset, settings_dict


# -- sampling and records --------------------------------------------------------------------------------------
def test_sample_covers_every_method_and_factor_band_and_is_seeded(tmp_path):
    judged = load_judged_run(write_judged_run(tmp_path / "run"))
    sample = sample_judged(judged, 12, seed=3)
    assert len(sample) == 12
    assert set(sample["method"]) == {"diffmean", "reft-r1", "prompt-steering"}
    bands = stratify(sample, ("method", "factor")).str.split("|").str[1]
    for method in ("diffmean", "reft-r1"):
        mine = bands[sample["method"] == method]
        assert {"factor=low", "factor=mid", "factor=high"} <= set(mine), mine.tolist()
    again = sample_judged(judged, 12, seed=3)
    assert sample.index.tolist() == again.index.tolist()
    assert sample.index.tolist() != sample_judged(judged, 12, seed=4).index.tolist()
    assert len(sample_judged(judged, None)) == len(judged)


def test_sample_leaves_out_parse_failures_and_rejects_bad_input(tmp_path):
    frame = judged_frame()
    frame.loc[0, ["concept_rating", "parse_status"]] = [np.nan, "parse_failure"]
    assert 0 not in sample_judged(frame, None).index
    with pytest.raises(ValueError, match="unknown key"):
        sample_judged(frame, 5, by=("method", "colour"))
    with pytest.raises(ValueError, match="positive number"):
        sample_judged(frame, 0)


def test_record_ids_come_from_content_not_ratings(tmp_path):
    judged = load_judged_run(write_judged_run(tmp_path / "run"))
    records = build_records(judged)
    assert len({r.id for r in records}) == len(records)
    rejudged = judged.assign(concept_rating=2.0)
    assert [r.id for r in build_records(rejudged)] == [r.id for r in records]
    changed = judged.copy()
    changed.loc[0, "generation"] = "different text"
    assert record_id(changed.iloc[0]) != records[0].id
    first = records[0]
    assert first.fields["response"] == judged.iloc[0]["generation"]
    assert first.metadata["model"] == "smollm2-135m-instruct" and first.metadata["layer"] == 10
    assert set(first.suggestions) == {"concept_rating", "instruction_rating", "fluency_rating"}
    assert first.agent.startswith("axbench-judge:stand-in-judge:")
    factor_free = next(r for r in records if r.metadata["method"] == "prompt-steering")
    assert "factor" not in factor_free.metadata


def test_missing_judgements_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="judge stage"):
        load_judged_run(tmp_path)


# -- agreement math (hand-computed) ------------------------------------------------------------------------------
def test_pair_stats_match_hand_computed_values():
    judge = np.array([0, 1, 2, 2, 1, 0])
    human = np.array([0, 2, 2, 1, 1, 0])
    stats = pair_stats(judge, human)
    # Observed weighted disagreement: two items one step apart, w = 1/4 each → (2 × 1/4) / 6 = 1/12.
    # Marginals judge (2,2,2)/6, human (2,2,2)/6 → expected = Σ p_i q_j (i-j)²/4 = (1/9)(4×1/4 + 2×1) = 1/3.
    assert stats.kappa == pytest.approx(1 - (1 / 12) / (1 / 3))  # 0.75
    assert stats.exact == pytest.approx(4 / 6)
    assert stats.confusion == [[2, 0, 0], [0, 1, 1], [0, 1, 1]]
    # Ranks: both have ranks (1.5, 3.5, 5.5) pattern; ρ = Pearson of ranks, computed by hand = 0.75.
    assert stats.spearman == pytest.approx(0.75)
    assert stats.mean_abs_diff == pytest.approx(2 / 6)


def test_degenerate_ratings_give_nan_with_a_reason():
    constant = pair_stats(np.array([2, 2, 2]), np.array([2, 2, 2]))
    assert math.isnan(constant.kappa) and "constant" in constant.kappa_reason
    assert math.isnan(constant.spearman) and "constant" in constant.spearman_reason
    assert constant.exact == 1.0
    empty = pair_stats(np.array([]), np.array([]))
    assert empty.n == 0 and math.isnan(empty.kappa)
    one_side = pair_stats(np.array([2, 2, 2]), np.array([0, 1, 2]))
    assert one_side.kappa == pytest.approx(0.0) and "judge" in one_side.spearman_reason


def test_score_agreement_uses_the_harmonic_mean():
    stats = score_stats(np.array([0.0, 1.2, 2.0, 1.5]), np.array([0.0, 1.0, 2.0, 2.0]))
    assert stats.mean_abs_diff == pytest.approx((0 + 0.2 + 0 + 0.5) / 4)
    assert stats.confusion[2][2] == 2 and stats.confusion[1][1] == 1  # 1.5 rounds to 2


def _labels() -> pd.DataFrame:
    # Records a, b, c rated by alice; a, b also by bob.
    return pd.DataFrame({
        "record_id": ["a", "b", "c", "a", "b"], "annotator": ["alice", "alice", "alice", "bob", "bob"],
        "judge_concept": [2, 1, 0, 2, 1], "human_concept": [2, 1, 0, 1, 1],
        "judge_instruction": [2, 2, 1, 2, 2], "human_instruction": [2, 1, 1, 2, 2],
        "judge_fluency": [2, 2, 2, 2, 2], "human_fluency": [2, 2, 2, 2, 2],
    })


def test_judge_human_agreement_on_a_labels_frame():
    agreement = judge_human_agreement(_labels())
    assert (agreement.n_records, agreement.n_annotators, agreement.n_comparisons) == (3, 2, 5)
    concept = agreement.criteria["concept"]
    assert concept.exact == pytest.approx(4 / 5)
    assert concept.confusion == [[1, 0, 0], [0, 2, 0], [0, 1, 1]]
    assert math.isnan(agreement.criteria["fluency"].kappa)
    # Harmonic means: judge (2, 1.5, 0, 2, 1.5), human (2, 1.2, 0, 1.5, 1.5) → |diff| (0, 0.3, 0, 0.5, 0).
    assert agreement.score.mean_abs_diff == pytest.approx(0.8 / 5)
    inter = agreement.annotators["concept"]
    assert inter.n_records == 2 and inter.exact == pytest.approx(0.5)
    # alice (2, 1) vs bob (1, 1) on a, b: bob constant → κ = 0 (expected = observed disagreement).
    assert inter.pairs["alice~bob"].kappa == pytest.approx(0.0)
    payload = json.dumps(agreement.to_dict())  # NaN becomes null: valid JSON
    assert "NaN" not in payload


def test_inter_annotator_without_overlap_says_why():
    single = _labels().iloc[:3]
    stats = inter_annotator(single, "human_concept")
    assert stats.n_records == 0 and "two or more" in stats.reason


def test_labels_outside_the_scale_are_rejected():
    bad = _labels().assign(human_concept=[3, 1, 0, 1, 1])
    with pytest.raises(ValueError, match="outside 0, 1, 2"):
        judge_human_agreement(bad)


# -- settings, Hub layout, labels folder, CLI, report -------------------------------------------------------------
def test_settings_and_rating_offset():
    spec = settings_dict(min_submitted=2)
    questions = {q["name"]: q for q in spec["questions"]}
    assert [o["value"] for o in questions["concept_rating"]["settings"]["options"]] == [0, 1, 2]
    assert questions["note"]["required"] is False
    assert spec["distribution"] == {"strategy": "overlap", "min_submitted": 2}
    assert "0: the concept does not appear" in spec["guidelines"]
    shifted = settings_dict(rating_offset=1)["questions"][0]["settings"]["options"]
    assert rating_offset([o["value"] for o in shifted]) == 1
    with pytest.raises(ValueError, match="consecutive"):
        rating_offset([1, 5, 10])


def test_export_in_argillas_hub_layout_round_trips(tmp_path):
    judged = load_judged_run(write_judged_run(tmp_path / "run"))
    records = build_records(sample_judged(judged, 9, seed=1))
    out = export_review(records, tmp_path / "export", "review-x", min_submitted=2, source="runs/x")
    assert (out / SETTINGS_FILE).is_file() and (out / ".argilla" / "dataset.json").is_file()
    table = pd.read_parquet(out / "data" / "train-00000-of-00001.parquet")
    assert {"id", "status", "instruction", "concept", "response", "method", "factor",
            "concept_rating.suggestion", "concept_rating.suggestion.agent"} <= set(table.columns)
    card = (out / "README.md").read_text()
    assert "review-x" in card and "from_hub" in card
    settings, dataset, back = read_review(out)
    assert dataset["name"] == "review-x" and settings["distribution"]["min_submitted"] == 2
    assert [(r.id, r.fields, r.suggestions, r.agent) for r in back] == \
        [(r.id, r.fields, r.suggestions, r.agent) for r in records]
    assert [r.metadata for r in back] == [r.metadata for r in records]
    with pytest.raises(FileExistsError):
        export_review(records, out, "again")


def _pulled_labels() -> pd.DataFrame:
    labels = _labels()
    return labels.assign(note="", instruction="i", concept="c", response="r", method="diffmean", model="m",
                         layer=10, factor=1.0, concept_id=0, judge_model="j", judge_agent="axbench-judge:j:h")


def test_labels_folder_agreement_cli_and_report(tmp_path):
    run = write_judged_run(tmp_path / "run", judged_frame(n_prompts=4))
    folder = write_labels(_pulled_labels(), run / "curation" / "review-x",
                          {"dataset": "review-x", "workspace": "argilla", "api_url": "http://127.0.0.1:1",
                           "rating_offset": 0})
    assert len(read_labels(folder)) == 5
    card = (folder / "README.md").read_text()
    assert "configs:" in card and "record × annotator" in card

    result = CliRunner().invoke(app, ["curate", "agreement", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["criteria"]["concept"]["exact"] == pytest.approx(0.8)
    assert (folder / AGREEMENT_FILE).is_file() and (folder / CONFUSION_PLOT).stat().st_size > 1000
    table = CliRunner().invoke(app, ["curate", "agreement", str(folder)], terminal_width=200)
    assert table.exit_code == 0 and "concept" in table.output and "5 comparisons" in table.output

    from axeval.report import build_report

    report = build_report(run, n_resamples=20)
    markdown = report.files["markdown"].read_text()
    assert "Judge–human agreement: review-x" in markdown and "plots/agreement_review-x.png" in markdown
    assert report.files["plot_agreement_review-x"].is_file()
    assert "Judge–human agreement" in report.files["html"].read_text()


def test_cli_export_and_errors(tmp_path):
    run = write_judged_run(tmp_path / "run")
    result = CliRunner().invoke(app, ["curate", "export", str(run), "--out", str(tmp_path / "exp"),
                                      "--dataset", "r", "--sample", "6"])
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(tmp_path / "exp" / "data" / "train-00000-of-00001.parquet")) == 6
    missing = CliRunner().invoke(app, ["curate", "send", str(tmp_path), "--dataset", "r"])
    assert missing.exit_code == 1 and "judgements.parquet" in missing.output
    no_server = CliRunner().invoke(app, ["curate", "send", str(run), "--dataset", "r"],
                                   env={"ARGILLA_API_URL": "", "ARGILLA_API_KEY": ""})
    assert no_server.exit_code == 1 and "ARGILLA_API_URL" in no_server.output


def test_pulled_labels_push_to_the_hub_and_load_with_datasets(tmp_path, hub_env):
    from datasets import load_dataset

    from axeval.curation.labels import push_labels

    folder = write_labels(_pulled_labels(), tmp_path / "labels", {"dataset": "review-x", "workspace": "argilla"})
    repo_id = hub_env.repo_id("review-labels")
    push_labels(folder, repo_id)
    loaded = load_dataset(repo_id, split="train")
    assert len(loaded) == 5 and loaded[0]["annotator"] == "alice"
