"""Reports from synthetic frames and from a run directory: files, leaderboard table, eval results, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from huggingface_hub import parse_eval_result_entries
from typer.testing import CliRunner

from axeval.cli.eval import eval_app
from axeval.judge_templates import JUDGE_TEMPLATE_HASH
from axeval.report import ReportInputs, build_report, perplexity_fluency_fields, perplexity_vs_fluency

FACTORS = (0.5, 1.0, 2.0)


def detection_rows() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frames = []
    for method, shift in (("DiffMean", 3.0), ("PCA", 0.5)):
        for concept_id in range(4):
            frames.append(pd.DataFrame({
                "method": method, "concept_id": concept_id,
                "category": ["positive"] * 10 + ["negative"] * 10 + ["hard negative"] * 2,
                "score": np.r_[rng.normal(shift, 1, 10), rng.normal(0, 1, 10), rng.normal(shift / 2, 1, 2)],
            }))
    return pd.concat(frames, ignore_index=True)


def judgements() -> pd.DataFrame:
    rows = []
    for concept_id in range(4):
        for prompt_id in range(4):
            half = "selection" if prompt_id < 2 else "heldout"
            for factor in FACTORS:  # DiffMean: best at 1.0 (all 2s), weaker elsewhere
                concept = 2 if factor >= 1.0 else 1
                fluency = 2 if factor <= 1.0 else 0
                rows.append(("DiffMean", concept_id, prompt_id, half, factor, concept, 2, fluency))
            rows.append(("Prompt", concept_id, prompt_id, half, np.nan, 1, 2, 2))  # factor-free: 1.5 everywhere
    frame = pd.DataFrame(rows, columns=["method", "concept_id", "prompt_id", "half", "factor", "concept_rating",
                                        "instruction_rating", "fluency_rating"])
    frame["parse_status"] = "ok"
    frame["judge_model"] = "gpt-4o-mini"
    frame["judge_template_hash"] = JUDGE_TEMPLATE_HASH
    frame["judge_temperature"] = 0.0
    frame["judge_calls"] = 3
    frame["judge_cost_usd"] = 0.0002
    return frame


def test_report_from_frames_writes_every_file_and_a_correct_leaderboard(tmp_path):
    inputs = ReportInputs(detection_rows=detection_rows(), judgements=judgements(), title="Synthetic")
    report = build_report(inputs, tmp_path, baseline="Prompt", dataset_id="axbench/concept10")
    for name in ("markdown", "html", "plot_roc", "plot_steering_factors", "detection", "steering",
                 "eval_results_DiffMean", "eval_results_PCA", "eval_results_Prompt"):
        assert report.files[name].exists(), name
    assert (tmp_path / "plots" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    board = report.leaderboard.set_index("Method")
    assert board.index.tolist() == ["DiffMean", "Prompt", "PCA"]  # by steering score, then AUROC
    assert board.loc["DiffMean", "Steering"] == "2.000 [2.000, 2.000]"
    assert board.loc["Prompt", "Steering"] == "1.500 [1.500, 1.500]"
    assert board.loc["PCA", "Steering"] == "–"
    assert board.loc["Prompt", "AUROC"] == "–"
    assert board.loc["DiffMean", "Winrate vs Prompt"] == "100.0%"
    assert board.loc["DiffMean", "Excluded (parse fail.)"] == "0 / 48"

    markdown = report.files["markdown"].read_text(encoding="utf-8")
    lines = markdown.splitlines()
    header = lines.index("## Leaderboard") + 2
    assert lines[header].startswith("| Method | AUROC | Hard-negative acc. |")
    assert lines[header + 1].startswith("|---|")
    assert lines[header + 2].startswith("| DiffMean | ")
    assert "![Concept detection: ROC curves](plots/roc.png)" in markdown
    assert "> Intervals over 4 concepts (fewer than 10) are rough" in markdown

    html = report.files["html"].read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 2 and "plots/" not in html  # self-contained
    # The HTML has every section of the markdown, under the same word headings.
    headings = [line[3:] for line in lines if line.startswith("## ")]
    assert "Judge" in headings and "Concept detection: ROC curves" in headings
    assert all(f"<h2>{heading}</h2>" in html for heading in headings)
    assert json.loads(report.files["leaderboard"].read_text())["methods"]["DiffMean"]["steering_score_mean"] == 2.0

    entries = parse_eval_result_entries(yaml.safe_load(report.files["eval_results_DiffMean"].read_text()))
    assert {e.task_id for e in entries} == {"concept_detection", "steering"}
    steering_entry = next(e for e in entries if e.task_id == "steering")
    assert steering_entry.dataset_id == "axbench/concept10" and steering_entry.value == 2.0
    assert "gpt-4o-mini" in steering_entry.notes and JUDGE_TEMPLATE_HASH in steering_entry.notes

    summary = report.summary()
    assert "| DiffMean |" in summary and "parse failures: 0 of 64" in summary

    selected = pd.read_parquet(report.files["steering"])
    assert set(selected[selected["method"] == "DiffMean"]["factor"]) == {1.0}


def test_report_from_run_dir_and_cli(tmp_path):
    run = tmp_path / "run"
    (run / "inference").mkdir(parents=True)
    (run / "eval").mkdir()
    detection_rows().to_parquet(run / "inference" / "latent.parquet")
    judgements().to_parquet(run / "eval" / "judgements.parquet")
    runner = CliRunner()
    result = runner.invoke(eval_app, ["report", str(run), "--dataset-id", "axbench/concept10"])
    assert result.exit_code == 0, result.output
    assert "DiffMean" in result.output and str(run / "eval" / "report.md") in result.output
    assert "| DiffMean |" not in result.output  # a table for people, not raw markdown
    assert (run / "eval" / ".eval_results" / "DiffMean.yaml").exists()
    result = runner.invoke(eval_app, ["report", str(run), "--json", "--baseline", "Prompt"])
    assert result.exit_code == 0, result.output
    board = json.loads(result.output)
    assert board["DiffMean"]["steering_score_mean"] == 2.0 and board["DiffMean"]["winrate_winrate"] == 1.0
    assert board["DiffMean"]["detection_auroc_ci_low"] <= board["DiffMean"]["detection_auroc_mean"]
    assert "detection_auroc_mean" not in board["Prompt"]  # prompt steering has no detector

    result = runner.invoke(eval_app, ["detect", str(run / "inference" / "latent.parquet"), "--json"])
    assert result.exit_code == 0, result.output
    by_method = json.loads(result.output)
    assert set(by_method) == {"DiffMean", "PCA"}
    assert by_method["DiffMean"]["auroc_mean"] > by_method["PCA"]["auroc_mean"]
    assert by_method["DiffMean"]["auroc_ci_low"] <= by_method["DiffMean"]["auroc_mean"]
    assert "hard_negative_accuracy_mean" in by_method["DiffMean"]

    result = runner.invoke(eval_app, ["steering", str(run / "eval" / "judgements.parquet"), "--json",
                                      "--baseline", "Prompt"])
    assert result.exit_code == 0, result.output
    by_method = json.loads(result.output)
    assert by_method["DiffMean"]["score_mean"] == 2.0 and by_method["Prompt"]["winrate"] == 0.5


def test_a_run_without_detecting_methods_reports_steering_only(tmp_path):
    """A run of steering-only methods (e.g. `methods.train: [hypersteer]`) writes an empty latent file."""
    run = tmp_path / "run"
    (run / "inference").mkdir(parents=True)
    (run / "eval").mkdir()
    detection_rows().iloc[:0].to_parquet(run / "inference" / "latent.parquet")
    judgements().to_parquet(run / "eval" / "judgements.parquet")
    report = build_report(run)
    assert report.detection_summary is None and report.steering_summary is not None
    assert "AUROC" not in report.leaderboard.columns and "Steering" in report.leaderboard.columns


def test_report_of_an_empty_run_dir_names_the_missing_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="inference/latent.parquet"):
        build_report(tmp_path)
    result = CliRunner().invoke(eval_app, ["steering", str(tmp_path / "missing.parquet")])
    assert result.exit_code != 0 and "does not exist" in result.output


def test_the_imbalance_column_names_the_ratio_the_run_had(tmp_path):
    rows = detection_rows()
    own = rows[rows["concept_id"] != -1]
    n_positive = int((own["category"] == "positive").sum())
    pool = pd.concat([pd.DataFrame({"method": method, "concept_id": -1, "category": "negative",
                                    "score": 0.0, "scored_concept_id": concept_id}, index=range(10))
                      for method in own["method"].unique() for concept_id in own["concept_id"].unique()])
    report = build_report(ReportInputs(detection_rows=rows, imbalance_rows=pool, title="x"), tmp_path)
    ratio = float(report.imbalance_summary["negatives_per_positive"].median())
    assert 1 < ratio < 100 and n_positive
    assert f"F1 (1:{ratio:.0f})" in report.leaderboard.columns and "F1 (1:100)" not in report.leaderboard.columns


def test_the_html_report_escapes_what_it_inserts_and_the_markdown_keeps_it_verbatim(tmp_path):
    report = build_report(ReportInputs(detection_rows=detection_rows(), title="<b>R&D</b>"), tmp_path, note="x < y")
    markdown = report.files["markdown"].read_text(encoding="utf-8")
    assert markdown.startswith("# <b>R&D</b>\n\n") and "\n> x < y\n" in markdown and markdown.endswith(")\n")
    html = report.files["html"].read_text(encoding="utf-8")
    assert "<title>&lt;b&gt;R&amp;D&lt;/b&gt;</title>" in html and "<b>R&D</b>" not in html
    assert '<p class="caveat">x &lt; y</p>' in html and html.endswith("</body></html>\n")


def _with_perplexity(frame: pd.DataFrame) -> pd.DataFrame:
    """Perplexity that rises as fluency falls (a judge that tracks fluency), and a lexical score per method."""
    return frame.assign(perplexity=np.where(frame["fluency_rating"] == 2, 8.0, 40.0) + frame["prompt_id"],
                        lexical_score=np.where(frame["method"] == "Prompt", 9.0, 3.0))


def test_a_capable_judge_leads_and_perplexity_is_reported_beside_fluency(tmp_path):
    report = build_report(ReportInputs(judgements=_with_perplexity(judgements()), title="t"), tmp_path)
    columns = report.leaderboard.columns.tolist()
    assert columns.index("Steering") < columns.index("Lexical concept %") < columns.index("Perplexity")
    assert report.leaderboard["Method"].tolist() == ["DiffMean", "Prompt"]  # by the judge's steering score
    assert report.lead == "judge" and not any("too small" in line for line in report.caveats())
    board = json.loads(report.files["leaderboard"].read_text())
    assert board["lead"] == "judge"
    # DiffMean's chosen factor is 1.0 (fluency 2): held-out prompts 2 and 3 → perplexity 10 and 11.
    assert board["methods"]["DiffMean"]["steering_perplexity_mean"] == pytest.approx(10.5)
    rho = report.fluency.set_index("method")["spearman_rho"]
    assert rho["all"] < -0.5 and board["perplexity_fluency_spearman"] == pytest.approx(rho["all"])
    # 4 concepts × 4 prompts: DiffMean at 3 factors, Prompt once; Prompt's fluency is always 2, so its rho is null
    assert board["perplexity_fluency_n"] == 64
    assert board["perplexity_fluency_by_method"] == {"DiffMean": {"spearman_rho": pytest.approx(rho["DiffMean"]),
                                                                  "n": 48}, "Prompt": {"spearman_rho": None, "n": 16}}
    markdown = report.files["markdown"].read_text()
    assert "Perplexity vs the judge's fluency" in markdown and "a negative rho is agreement" in markdown
    assert "| Prompt | 16 | – |" in markdown


def test_perplexity_vs_fluency_is_scipys_spearman_per_method_and_overall():
    from scipy.stats import spearmanr

    frame = pd.DataFrame({
        "method": ["A"] * 6 + ["B"] * 5,
        # ties on both sides; a NaN perplexity (empty generation) and a NaN rating (parse failure) are left out
        "perplexity": [3.0, 9.5, 9.5, 40.0, np.nan, 12.0, 7.0, 2.0, 50.0, 8.0, 8.0],
        "fluency_rating": [2.0, 1.0, 2.0, 0.0, 2.0, np.nan, 1.0, 2.0, 0.0, 2.0, 1.0],
    })
    table = perplexity_vs_fluency(frame).set_index("method")
    for method, rows in (("A", frame[frame["method"] == "A"]), ("B", frame[frame["method"] == "B"]), ("all", frame)):
        both = rows.dropna()
        assert table.loc[method, "n"] == len(both)
        assert table.loc[method, "spearman_rho"] == pytest.approx(
            spearmanr(both["perplexity"], both["fluency_rating"]).statistic, abs=1e-12)
    assert (table.loc["A", "n"], table.loc["all", "n"]) == (4, 9) and table.loc["all", "spearman_rho"] < 0


def test_an_undefined_perplexity_fluency_rho_is_null():
    frame = pd.DataFrame({"method": ["Few", "Few", "Flat", "Flat", "Flat", "Flat"],
                          "perplexity": [3.0, 30.0, 3.0, 5.0, 8.0, 13.0],
                          "fluency_rating": [2.0, 0.0, 1.0, 1.0, 1.0, 1.0]})  # 2 pairs; constant ratings
    fields = perplexity_fluency_fields(perplexity_vs_fluency(frame))
    assert fields["perplexity_fluency_by_method"] == {"Few": {"spearman_rho": None, "n": 2},
                                                      "Flat": {"spearman_rho": None, "n": 4}}
    assert fields["perplexity_fluency_n"] == 6 and fields["perplexity_fluency_spearman"] is not None
    constant = perplexity_vs_fluency(frame.assign(perplexity=7.0)).set_index("method")["spearman_rho"]
    assert constant.isna().all()
    assert perplexity_vs_fluency(frame.drop(columns="perplexity")) is None
    assert perplexity_fluency_fields(None) == {"perplexity_fluency_spearman": None, "perplexity_fluency_n": 0,
                                               "perplexity_fluency_by_method": {}}


def test_an_embedded_judge_puts_the_judge_free_scores_first_and_marks_its_own(tmp_path):
    frame = _with_perplexity(judgements()).assign(judge_model="smollm2-135m-instruct")
    report = build_report(ReportInputs(judgements=frame, title="t"), tmp_path)
    columns = report.leaderboard.columns.tolist()
    assert "Steering" not in columns
    assert columns.index("Lexical concept %") < columns.index("Perplexity") < columns.index("Steering*")
    assert report.leaderboard["Method"].tolist() == ["Prompt", "DiffMean"]  # by the lexical score now
    assert report.lead == "judge-free"
    assert any("smollm2-135m-instruct) is an embedded model too small" in line for line in report.caveats())

    from rich.console import Console

    from axeval.cli.display import print_leaderboard

    board = json.loads(report.files["leaderboard"].read_text())
    # the demo's widest cells: a long method name, AUROC and F1 intervals, a four-digit perplexity interval
    board["methods"]["prompt-steering"] = {**board["methods"].pop("Prompt"), "detection_auroc_mean": 0.806,
                                           "detection_auroc_ci_low": 0.45, "detection_auroc_ci_high": 1.0,
                                           "imbalance_f1_mean": 0.749, "imbalance_f1_ci_low": 0.53,
                                           "imbalance_f1_ci_high": 0.92, "imbalance_negatives_per_positive": 5,
                                           "steering_perplexity_ci_high": 1234.5}
    console = Console(width=80, record=True)
    print_leaderboard(console, board)
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "method" in line)
    assert header.index("Lexical %") < header.index("PPL") < header.index("Steering*")
    assert max(len(line.rstrip()) for line in lines) <= 80 and "…" not in "\n".join(lines)  # nothing cut
