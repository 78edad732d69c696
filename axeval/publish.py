"""Results on the Hub: a run's `.eval_results` into a model / dictionary repo, and the leaderboard as a dataset.

- `read_eval_results(run_dir_or_file, method)` reads (and checks) the entries the report wrote: the one reader of
  `axbench eval push` and `axbench dictionary push`.
- `publish_eval_results(run_dir, repo_id, method=…)` (`axbench eval push`) uploads the method's
  `.eval_results/<method>.yaml` (written by the report, naming the benchmark dataset and commit the run used) to
  `repo_id` as `.eval_results/axbench-<config>.yaml`, as a commit or as a pull request (a community result).
- `leaderboard_frame(run_dirs)` is one row per method × run: the scores with their intervals, the number of
  concepts, the judge, the protocol, the model, layer and dataset (repo, commit, config) — and
  `publish_leaderboard(run_dirs, repo_id)` (`axbench leaderboard push`) pushes it as a dataset
  (`data/train-….parquet` + card) that `load_dataset(repo_id, split="train")` reads, and
  `leaderboard_html(repo_id)` turns back into the report's page.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from huggingface_hub import CommitOperationAdd, HfApi

from axdata.cards import render_card
from axdata.errors import InputError
from axeval.report import Report, render_html, run_benchmark_data
from axeval.rundir import RunDirectory
from axeval.stats import ConfidenceInterval

EVAL_RESULTS_DIR = ".eval_results"
LEADERBOARD_COLUMNS = (
    "method", "model", "layer", "dataset_id", "dataset_revision", "dataset_config", "auroc", "auroc_ci_low",
    "auroc_ci_high", "steering_score", "steering_ci_low", "steering_ci_high", "n_concepts", "judge_model",
    "judge_templates", "protocol", "run",
)


@dataclass(frozen=True)
class Published:
    repo_id: str
    path_in_repo: str
    url: str  # the commit, or the pull request


def eval_results_file(run_dir: str | Path, method: str | None = None) -> Path:
    """The run's `.eval_results` file of `method` (or of its only method)."""
    folder = Path(run_dir) / "eval" / EVAL_RESULTS_DIR
    files = {path.stem: path for path in sorted(folder.glob("*.yaml"))}
    if not files:
        raise FileNotFoundError(f"{folder} holds no results: the report writes them when the run's data came from "
                                "the Hub (axbench data pull) or a dataset is named (axbench eval report RUN_DIR "
                                "--dataset-id ORG/DATASET).")
    if method is None and len(files) == 1:
        return next(iter(files.values()))
    if method not in files:
        raise InputError(f"{folder} has results for {', '.join(files)}; choose one with --method.")
    return files[method]


def read_eval_results(source: str | Path, method: str | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """The `.eval_results` entries `axbench eval report` wrote, from a run directory (the file of `method`, or of
    its only method) or from the file itself: what both `axbench eval push` and `axbench dictionary push` upload."""
    path = Path(source)
    if path.is_dir():
        path = eval_results_file(path, method)
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise InputError(f"cannot read {path} ({error}); pass a file written by `axbench eval report`.") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "dataset" in e and "value" in e
                                                for e in entries):
        raise InputError(f"{path} is not a list of .eval_results entries (dataset, value).")
    return path, entries


def publish_eval_results(run_dir: str | Path, repo_id: str, *, method: str | None = None, create_pr: bool = False,
                         repo_type: str = "model", token: str | None = None) -> Published:
    """Upload a method's results to `repo_id` (a model or steering-dictionary repo that must exist)."""
    source, entries = read_eval_results(run_dir, method)
    if not entries:
        raise InputError(f"{source} holds no results; run `axbench eval report` on a run with scores.")
    config = next((entry["dataset"]["task_id"].split("-", 1)[1] for entry in entries
                   if "-" in entry["dataset"]["task_id"]), None)
    path_in_repo = f"{EVAL_RESULTS_DIR}/axbench{'-' + config if config else ''}.yaml"
    commit = HfApi(token=token).create_commit(
        repo_id, [CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=source.read_bytes())],
        repo_type=repo_type, create_pr=create_pr,
        commit_message=f"AxBench results of {source.stem} ({entries[0]['dataset']['id']})")
    return Published(repo_id, path_in_repo, commit.pr_url if create_pr and commit.pr_url else commit.commit_url)


def leaderboard_frame(run_dirs: Sequence[str | Path], dataset_id: str | None = None) -> pd.DataFrame:
    """One row per method × run, from each run's `eval/leaderboard.json` and `config.yaml`."""
    rows = []
    for run_dir in map(Path, run_dirs):
        run = RunDirectory(run_dir)
        if not run.config_path.is_file():
            raise FileNotFoundError(f"{run_dir} has no config.yaml; pass a run directory written by `axbench run`.")
        board_path = run.leaderboard_path
        if not board_path.is_file():
            raise FileNotFoundError(f"{board_path} does not exist; run the report first (axbench eval report "
                                    f"{run_dir}).")
        board = json.loads(board_path.read_text(encoding="utf-8"))
        config = run.read_config()
        data = run_benchmark_data(run_dir, dataset_id)
        judge = board.get("judge_details") or {}
        for method, values in board["methods"].items():
            rows.append({
                "method": method, "model": config.get("model", {}).get("model"), "layer": config.get("run", {}).get("layer"),
                "dataset_id": data.dataset_id if data else None, "dataset_revision": data.revision if data else None,
                "dataset_config": data.config if data else None,
                "auroc": values.get("detection_auroc_mean"), "auroc_ci_low": values.get("detection_auroc_ci_low"),
                "auroc_ci_high": values.get("detection_auroc_ci_high"),
                "steering_score": values.get("steering_score_mean"),
                "steering_ci_low": values.get("steering_score_ci_low"),
                "steering_ci_high": values.get("steering_score_ci_high"),
                "n_concepts": max(int(values.get("detection_n_concepts") or 0), int(values.get("steering_n_concepts") or 0)),
                "judge_model": ", ".join(judge["judge_model"]) if judge else None,
                "judge_templates": ", ".join(judge["judge_template_hash"]) if judge else None,
                "protocol": config.get("run", {}).get("protocol", "fixed"), "run": run_dir.name,
            })
    return pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))


def publish_leaderboard(run_dirs: Sequence[str | Path], repo_id: str, *, dataset_id: str | None = None,
                        private: bool = False, token: str | None = None) -> Published:
    """Push the leaderboard of `run_dirs` as the dataset `repo_id` (created if missing), with its card."""
    frame = leaderboard_frame(run_dirs, dataset_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="axbench-leaderboard-") as staging:
        parquet = Path(staging) / "train-00000-of-00001.parquet"
        frame.to_parquet(parquet, index=False)
        rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
        card = render_card("leaderboard_card.md", repo_id=repo_id, rows=rows,
                           columns=list(LEADERBOARD_COLUMNS), n_runs=frame["run"].nunique())
        commit = api.create_commit(repo_id, [
            CommitOperationAdd(path_in_repo="data/train-00000-of-00001.parquet", path_or_fileobj=str(parquet)),
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()),
        ], repo_type="dataset", commit_message=f"AxBench leaderboard: {len(frame)} rows from {len(run_dirs)} runs")
    return Published(repo_id, "data/train-00000-of-00001.parquet", commit.commit_url)


def _interval(mean: Any, low: Any, high: Any) -> str:
    return "–" if pd.isna(mean) else ConfidenceInterval(float(mean), float(low), float(high), 0).format()


def load_leaderboard(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A leaderboard frame, from a frame, a local parquet file or a Hub dataset repo pushed by `publish_leaderboard`."""
    if isinstance(source, pd.DataFrame):
        return source
    if Path(source).is_file():
        return pd.read_parquet(source)
    import datasets

    return datasets.load_dataset(str(source), split="train").to_pandas()


def leaderboard_html(source: str | Path | pd.DataFrame, title: str | None = None) -> str:
    """The leaderboard dataset as the report's self-contained HTML page (methods × settings, with intervals)."""
    frame = load_leaderboard(source)
    table = pd.DataFrame({
        "Method": frame["method"], "Model": frame["model"], "Layer": frame["layer"],
        "AUROC": [_interval(*row) for row in frame[["auroc", "auroc_ci_low", "auroc_ci_high"]].itertuples(index=False)],
        "Steering": [_interval(*row) for row in
                     frame[["steering_score", "steering_ci_low", "steering_ci_high"]].itertuples(index=False)],
        "Concepts": frame["n_concepts"], "Judge": frame["judge_model"].fillna("–"), "Protocol": frame["protocol"],
        "Dataset": [f"{d}@{(r or '')[:12]} ({c})" if d else "–"
                    for d, r, c in zip(frame["dataset_id"], frame["dataset_revision"], frame["dataset_config"])],
    })
    report = Report(leaderboard=table.sort_values(["Model", "Layer", "Steering"], ascending=[True, True, False]))
    name = title or (f"AxBench leaderboard: {source}" if not isinstance(source, pd.DataFrame) else "AxBench leaderboard")
    return render_html(report, name, {})
