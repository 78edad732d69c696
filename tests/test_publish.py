"""The benchmark on the Hub: eval.yaml on push, the data's origin on pull, results that name the data a run used,
results opened on a model repo (commit or pull request), the leaderboard as a dataset."""

from __future__ import annotations

from pathlib import Path

import datasets
import yaml
from fixtures_hub import HubEnv
from huggingface_hub import DatasetCard, HfApi, hf_hub_download, parse_eval_result_entries
from test_builders import make_dataset
from test_report import detection_rows, judgements
from typer.testing import CliRunner

from axdata.benchmark import read_hub_origin, task_id
from axdata.builders.hub import pull_dataset, push_dataset
from axeval.cli.eval import eval_app
from axeval.cli.leaderboard import leaderboard_app
from axeval.report import build_report


def _run_on_pulled_data(tmp_path: Path, hub_env: HubEnv) -> tuple[Path, str, str]:
    """A run directory whose data was pulled from the Hub, with a report."""
    repo_id = hub_env.repo_id("bench")
    make_dataset(tmp_path / "local", configs={"tiny-a-l2": True})
    pushed = push_dataset(tmp_path / "local", repo_id)
    pulled = tmp_path / "pulled"
    pull_dataset(repo_id, pulled, revision="v1.0.0")
    run = tmp_path / "runs" / "r1"
    (run / "inference").mkdir(parents=True)
    (run / "eval").mkdir()
    detection_rows().to_parquet(run / "inference" / "latent.parquet")
    judgements().to_parquet(run / "eval" / "judgements.parquet")
    (run / "config.yaml").write_text(yaml.safe_dump({
        "run": {"name": "r1", "layer": 2, "dataset_dir": str(pulled), "protocol": "fixed"},
        "model": {"model": "tiny/llama"}, "data": {"dataset_config": None}}))
    build_report(run)
    return run, repo_id, pushed.commit_oid


def test_push_registers_the_benchmark_and_pull_records_the_origin(hub_env: HubEnv, tmp_path: Path) -> None:
    repo_id = hub_env.repo_id("bench")
    local = make_dataset(tmp_path / "ds")
    report = push_dataset(local, repo_id)
    registration = yaml.safe_load(Path(hf_hub_download(repo_id, "eval.yaml", repo_type="dataset")).read_text())
    assert registration["evaluation_framework"] == "axbench" and registration["name"]
    tasks = {task["id"]: task for task in registration["tasks"]}
    # Each config has a detection task on its latent split; steering only where a steering split exists.
    assert tasks[task_id("concept_detection", "tiny-a-l2")] == {"id": "concept_detection-tiny-a-l2",
                                                                "config": "tiny-a-l2", "split": "latent"}
    assert tasks[task_id("steering", "tiny-a-l2")]["split"] == "steering"
    assert task_id("steering", "tiny-b-l3") not in tasks
    card_configs = {config["config_name"] for config in DatasetCard.load(repo_id, repo_type="dataset").data.configs}
    assert card_configs == {task["config"] for task in registration["tasks"]}

    pulled = tmp_path / "pulled"
    pull_dataset(repo_id, pulled, revision="v1.0.0")
    origin = read_hub_origin(pulled)
    assert (origin.repo_id, origin.revision, origin.commit) == (repo_id, "v1.0.0", report.commit_oid)


def test_eval_results_name_the_data_the_run_used(hub_env: HubEnv, tmp_path: Path) -> None:
    run, repo_id, commit = _run_on_pulled_data(tmp_path, hub_env)
    entries = parse_eval_result_entries(yaml.safe_load((run / "eval" / ".eval_results" / "DiffMean.yaml").read_text()))
    assert {e.dataset_id for e in entries} == {repo_id} and {e.dataset_revision for e in entries} == {commit}
    assert {e.task_id for e in entries} == {"concept_detection-tiny-a-l2", "steering-tiny-a-l2"}
    steering = next(e for e in entries if e.task_id.startswith("steering"))
    assert "95% CI" in steering.notes and "judge gpt-4o-mini" in steering.notes and "templates" in steering.notes


def test_a_run_without_hub_data_writes_no_eval_results(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "inference").mkdir(parents=True)
    detection_rows().to_parquet(run / "inference" / "latent.parquet")
    report = build_report(run)
    assert not [name for name in report.files if name.startswith("eval_results_")]
    named = build_report(run, dataset_id="org/bench")
    entries = parse_eval_result_entries(yaml.safe_load(named.files["eval_results_DiffMean"].read_text()))
    assert {(e.dataset_id, e.dataset_revision) for e in entries} == {("org/bench", None)}


def test_push_results_as_a_commit_or_a_pull_request_and_the_leaderboard(hub_env: HubEnv, tmp_path: Path) -> None:
    run, repo_id, commit = _run_on_pulled_data(tmp_path, hub_env)
    model_repo = hub_env.repo_id("diffmean-dictionary")
    api = HfApi()
    api.create_repo(model_repo)
    runner = CliRunner()
    result = runner.invoke(eval_app, ["push", str(run), model_repo, "--method", "DiffMean"])
    assert result.exit_code == 0, result.output
    published = yaml.safe_load(Path(hf_hub_download(model_repo, ".eval_results/axbench-tiny-a-l2.yaml")).read_text())
    assert published[0]["dataset"]["id"] == repo_id and published[0]["dataset"]["revision"] == commit
    result = runner.invoke(eval_app, ["push", str(run), model_repo, "--method", "PCA", "--pr"])
    assert result.exit_code == 0, result.output
    pull_requests = [d for d in api.get_repo_discussions(model_repo) if d.is_pull_request]
    assert len(pull_requests) == 1 and "AxBench results of PCA" in pull_requests[0].title
    # The pull request holds PCA's results; main still holds DiffMean's.
    on_pr = yaml.safe_load(Path(hf_hub_download(model_repo, ".eval_results/axbench-tiny-a-l2.yaml",
                                                revision="refs/pr/1")).read_text())
    assert on_pr[0]["value"] != published[0]["value"]
    assert yaml.safe_load(Path(hf_hub_download(model_repo, ".eval_results/axbench-tiny-a-l2.yaml")).read_text()) == \
        published
    result = runner.invoke(eval_app, ["push", str(run), model_repo])  # two methods: which one?
    assert result.exit_code == 1 and "--method" in result.output

    board_repo = hub_env.repo_id("leaderboard")
    result = runner.invoke(leaderboard_app, ["push", str(run), board_repo])
    assert result.exit_code == 0, result.output
    board = datasets.load_dataset(board_repo, split="train").to_pandas().set_index("method")
    assert set(board.index) == {"DiffMean", "PCA", "Prompt"}
    assert board.loc["DiffMean", "steering_score"] == 2.0 and board.loc["DiffMean", "dataset_revision"] == commit
    assert board.loc["DiffMean", "judge_model"] == "gpt-4o-mini" and board.loc["DiffMean", "n_concepts"] == 4
    assert board.loc["PCA", "auroc"] < board.loc["DiffMean", "auroc"]
    # The report page, rebuilt from the pushed leaderboard.
    result = runner.invoke(leaderboard_app, ["show", board_repo, "--html", str(tmp_path / "board.html")],
                           terminal_width=80)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "board.html").read_text()
    assert "<h2>Leaderboard</h2>" in page and "DiffMean" in page and "2.000 [2.000, 2.000]" in page


def test_a_dictionary_pushed_with_its_results_carries_them(hub_env: HubEnv, tmp_path: Path) -> None:
    import torch
    from huggingface_hub import ModelCard
    from test_dictionary import make_dictionary

    from axeval.cli.dictionary import dictionary_app

    run, repo_id, commit = _run_on_pulled_data(tmp_path, hub_env)
    make_dictionary(calibration=torch.ones(4)).save_pretrained(tmp_path / "dict")
    model_repo = hub_env.repo_id("diffmean")
    result = CliRunner().invoke(dictionary_app, ["push", str(tmp_path / "dict"), model_repo, "--eval-results",
                                                 str(run / "eval" / ".eval_results" / "DiffMean.yaml")])
    assert result.exit_code == 0, result.output
    index = ModelCard.load(model_repo).data.eval_results
    assert {(r.dataset_name, r.dataset_revision) for r in index} == {(repo_id, commit)}
    assert {r.task_name for r in index} == {"concept_detection-tiny-a-l2", "steering-tiny-a-l2"}
    assert ".eval_results/axbench-tiny-a-l2.yaml" in HfApi().list_repo_files(model_repo)  # as `eval push` names it
    # A run directory names the same results (its file of the dictionary's method), as `axbench eval push` reads it.
    from_run = hub_env.repo_id("diffmean-from-run")
    result = CliRunner().invoke(dictionary_app, ["push", str(tmp_path / "dict"), from_run, "--eval-results", str(run)])
    assert result.exit_code == 0, result.output
    assert ModelCard.load(from_run).data.eval_results == index


def test_a_run_dictionary_is_pushed_with_the_runs_results(hub_env: HubEnv, tmp_path: Path) -> None:
    """A dictionary inside a run directory (<run>/dictionaries/<method>/) takes the run's results by itself."""
    import torch
    from huggingface_hub import ModelCard
    from test_dictionary import make_dictionary

    from axeval.cli.dictionary import dictionary_app

    run, _repo_id, commit = _run_on_pulled_data(tmp_path, hub_env)
    make_dictionary(calibration=torch.ones(4)).save_pretrained(run / "dictionaries" / "DiffMean")
    model_repo = hub_env.repo_id("run-diffmean")
    result = CliRunner().invoke(dictionary_app, ["push", str(run / "dictionaries" / "DiffMean"), model_repo])
    assert result.exit_code == 0, result.output
    assert "With the run's results" in result.output
    assert {r.dataset_revision for r in ModelCard.load(model_repo).data.eval_results} == {commit}
