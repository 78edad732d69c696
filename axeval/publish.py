"""Results on the Hub: a run's `.eval_results` into a model / dictionary repo, and the leaderboard as a dataset.

- `read_eval_results(run_dir_or_file, method)` reads (and checks) the entries the report wrote: the one reader of
  `axbench eval push` and `axbench dictionary push`.
- `publish_eval_results(run_dir, repo_id, method=…)` (`axbench eval push`) uploads the method's
  `.eval_results/<method>.yaml` (written by the report, naming the benchmark dataset and commit the run used) to
  `repo_id` as `.eval_results/axbench-<config>.yaml`, as a commit or as a pull request (a community result).
- `leaderboard_frame(run_dirs)` is one row per method × run: the scores with their intervals (detection, steering,
  suppression; the suppression score under each attack as JSON), the number of concepts, the judge, the protocol,
  the model, layer and dataset (repo, commit, config) — and
  `publish_leaderboard(run_dirs, repo_id)` (`axbench leaderboard push`) pushes it as a dataset
  (`data/train-….parquet` + card) that `load_dataset(repo_id, split="train")` reads, and
  `leaderboard_html(repo_id)` turns back into the report's page.
- `verify_run_for_publishing(run_dir)` is what every one of them runs first (`eval push`, `leaderboard push`,
  `dictionary push` with a run's results): the leaderboard must be the one the run's own stage outputs give now.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from huggingface_hub import CommitOperationAdd, HfApi

from axdata.cards import render_card
from axdata.errors import InputError
from axeval.report import (
    STAGE_OUTPUTS,
    Report,
    ReportInputs,
    build_report,
    render_html,
    report_stamp,
    run_benchmark_data,
    write_eval_results,
)
from axeval.rundir import RunDirectory
from axeval.stats import ConfidenceInterval
from axmethods.contract import EVAL_RESULTS_DIR, eval_results_repo_path

LEADERBOARD_COLUMNS = (
    "method", "model", "layer", "dataset_id", "dataset_revision", "dataset_config", "auroc", "auroc_ci_low",
    "auroc_ci_high", "steering_score", "steering_ci_low", "steering_ci_high", "n_concepts", "judge_model",
    "judge_templates", "protocol", "run", "suppression_score", "suppression_ci_low", "suppression_ci_high",
    "attack_scores",
)


@dataclass(frozen=True)
class Published:
    repo_id: str
    path_in_repo: str
    url: str  # the commit, or the pull request


# What a leaderboard value may be, by field prefix (longest first wins): AUROC, accuracies, F1, rates and winrates are
# shares, the judge's ratings and steering score are 0–2, the lexical concept score is a percentage.
_SHARE, _RATING = (0.0, 1.0), (0.0, 2.0)
_RANGES: dict[str, tuple[float, float]] = {
    "detection_auroc_": _SHARE, "detection_hard_negative_accuracy_": _SHARE, "detection_macro_accuracy": _SHARE,
    "detection_f1": _SHARE, "imbalance_precision": _SHARE, "imbalance_recall": _SHARE, "imbalance_f1": _SHARE,
    "steering_score_": _RATING, "steering_concept_rating": _RATING, "steering_instruction_rating": _RATING,
    "steering_fluency_rating": _RATING, "steering_parse_failure_rate": _SHARE, "steering_lexical_score_": (0.0, 100.0),
    "steering_perplexity_": (0.0, math.inf), "imbalance_negatives_per_positive": (0.0, math.inf),
    "winrate_winrate": _SHARE, "steering_rule_score_": _SHARE,
    # suppression (axeval.modes): the same scales; attack_<variant>_* values are checked by the rebuild alone
    "suppression_score_": _RATING, "suppression_concept_rating": _RATING, "suppression_instruction_rating": _RATING,
    "suppression_fluency_rating": _RATING, "suppression_parse_failure_rate": _SHARE,
    "suppression_lexical_score_": (0.0, 100.0), "suppression_perplexity_": (0.0, math.inf),
    "suppression_rule_score_": _SHARE,
}
_COUNTS = ("winrate_wins", "winrate_ties", "winrate_losses")  # counts whose names do not say `_n`


@dataclass(frozen=True)
class VerifiedRun:
    """A run whose leaderboard.json is what its own stage outputs give now (`verify_run_for_publishing`)."""

    run_dir: Path
    board: dict[str, Any]  # eval/leaderboard.json
    report: Report  # the report rebuilt from the stage outputs (what .eval_results are checked against)


def _refuse(where: Path, problem: str, fix: str) -> InputError:
    return InputError(f"Publishing refused: {where}: {problem}. Nothing was uploaded; {fix}.")


def verify_run_for_publishing(run_dir: str | Path) -> VerifiedRun:
    """Check a run before any of its results leave the machine; every publisher calls this first.

    In order: the leaderboard file is whole JSON with methods; every value is a finite number in its metric's
    range and every interval is ordered; a pipeline run's report stage finished; the stage outputs exist and are
    readable parquet; they are byte for byte the files the report was built from (the report's stamp: their content
    hashes, recorded in leaderboard.json); and the report rebuilt from them now, with the settings it was built
    with, gives the same concept count, methods, values and judge. The first failure raises one `InputError`
    naming the file and field; nothing is uploaded.
    """
    run = RunDirectory(Path(run_dir))
    rebuild = f"rebuild the report from the run's outputs (axbench eval report {run.root}) and publish again"
    if not run.config_path.is_file():
        raise FileNotFoundError(f"{run.root} has no config.yaml; pass a run directory written by `axbench run`.")
    board = _read_board(run.leaderboard_path, rebuild)
    _check_values(run.leaderboard_path, board, rebuild)
    _check_pipeline_stamps(run)
    inputs = _read_stage_outputs(run)
    _check_stamp(run, board, rebuild)
    report = _rebuild(run.root, inputs, board["built_with"])
    _check_same(run.leaderboard_path, board, report, rebuild)
    return VerifiedRun(run.root, board, report)


def _read_board(path: Path, rebuild: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the report first (axbench eval report "
                                f"{path.parent.parent}).")
    try:
        board = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _refuse(path, f"not readable JSON ({error}); the file is damaged or truncated", rebuild) from None
    if not isinstance(board, dict) or not isinstance(board.get("methods"), dict) or not board["methods"] or \
            not all(isinstance(values, dict) for values in board["methods"].values()):
        raise _refuse(path, "holds no \"methods\" table of results", rebuild)
    if not isinstance(board.get("built_with"), dict) or "stamp" not in board:
        raise _refuse(path, "does not record how it was built (\"built_with\", \"stamp\": it predates publishing "
                      "checks, or was written by hand)", rebuild)
    return board


def _check_values(path: Path, board: dict[str, Any], rebuild: str) -> None:
    """Finite numbers in range, counts whole and non-negative, intervals low ≤ high (None: undefined, allowed)."""
    count = board.get("n_concepts")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise _refuse(path, f"n_concepts is {count!r}, not a count of concepts", rebuild)
    for method, values in board["methods"].items():
        for key, value in values.items():
            if value is None or isinstance(value, str):
                continue
            field_name = f"methods.{method}.{key}"
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _refuse(path, f"{field_name} is {value!r}, not a number", rebuild)
            if not math.isfinite(value):
                raise _refuse(path, f"{field_name} is {value}, not a finite number (an undefined metric is null)",
                              rebuild)
            if key.endswith("_n") or "_n_" in key or key in _COUNTS:
                if value < 0 or value != int(value):
                    raise _refuse(path, f"{field_name} is {value}, not a count", rebuild)
                continue
            prefix = max((p for p in _RANGES if key.startswith(p)), key=len, default=None)
            if prefix is not None and not _RANGES[prefix][0] <= value <= _RANGES[prefix][1]:
                low, high = _RANGES[prefix]
                raise _refuse(path, f"{field_name} is {value}, outside its range [{low:g}, {high:g}]", rebuild)
        for key in values:
            if key.endswith("_ci_low"):
                low, high = values[key], values.get(key[:-len("_ci_low")] + "_ci_high")
                if low is not None and high is not None and low > high:
                    raise _refuse(path, f"methods.{method}.{key} is {low}, above its high end {high} (an interval "
                                  "must be ordered)", rebuild)


def _check_pipeline_stamps(run: RunDirectory) -> None:
    """In a run of `axbench run` (it has stages/): the report stage finished. Whether the report is current is the
    content stamp's to say (`_check_stamp`): a stage that ran again and wrote the same bytes leaves it current. (A
    run whose report was built by `axbench eval report` on its files alone has no stages/.)"""
    if run.stages_dir.is_dir() and run.read_stamp("report") is None:
        raise _refuse(run.stamp_path("report"), "missing: the run's report stage never finished",
                      "finish the run (axbench run CONFIG resumes where it stopped) and publish again")


def _read_stage_outputs(run: RunDirectory) -> ReportInputs:
    """The stage outputs the report reads, read as the report reads them; a missing or damaged file is named."""
    present = [name for name in STAGE_OUTPUTS if (run.root / name).is_file()]
    if not present:
        raise _refuse(run.root, f"holds none of {', '.join(STAGE_OUTPUTS)}: the run's stages never ran, so its "
                      "leaderboard is not backed by any result", "run it first (axbench run CONFIG)")
    for name in present:
        try:
            pq.ParquetFile(run.root / name)  # opening reads the footer: a truncated file fails here
        except (pa.ArrowException, OSError) as error:
            raise _refuse(run.root / name, f"not a readable parquet file ({error}); it is damaged or truncated",
                          "re-run the stage that writes it (axbench run CONFIG --force, or the stage's own "
                          "command) and the report") from None
    try:
        return ReportInputs.from_run_dir(run.root)
    except (pa.ArrowException, OSError) as error:
        raise _refuse(run.root, f"its stage outputs cannot be read ({error})",
                      "re-run the stages that write them and the report") from None


def _check_stamp(run: RunDirectory, board: dict[str, Any], rebuild: str) -> None:
    """The stage outputs are byte for byte those the report was built from (their hashes in leaderboard.json)."""
    recorded, current = board["stamp"] or {}, report_stamp(run.root)
    for name in sorted(set(recorded) | set(current)):
        if recorded.get(name) != current.get(name):
            change = "is new" if name not in recorded else "is gone" if name not in current else "changed"
            raise _refuse(run.leaderboard_path, f"stale: {name} {change} since the report was built (stamp)", rebuild)


def _rebuild(root: Path, inputs: ReportInputs, built_with: dict[str, Any]) -> Report:
    """The report of `inputs` with the recorded settings, built by the report's own code into a scratch folder."""
    settings = {key: built_with.get(key) for key in ("baseline", "suppression", "n_resamples", "seed",
                                                     "parse_failures_as_zero")}
    quiet = logging.getLogger("axeval.report")
    was_disabled, quiet.disabled = quiet.disabled, True  # its "Wrote the report to <scratch>" would mislead
    try:
        with tempfile.TemporaryDirectory(prefix="axbench-verify-") as scratch:
            return build_report(inputs, scratch, **settings)
    except ValueError as error:  # the metric math's word for input it cannot score (axdata.errors): the files'
        raise _refuse(root, f"its stage outputs cannot be scored ({error})",
                      "re-run the stages that write them and the report") from None
    finally:
        quiet.disabled = was_disabled


def _plain(value: Any) -> Any:
    """As leaderboard.json holds it (JSON round trip)."""
    return json.loads(json.dumps(value, default=str))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(a, b, rel_tol=1e-9,
                                                                                           abs_tol=1e-12)
    return a == b


def _check_same(path: Path, board: dict[str, Any], report: Report, rebuild: str) -> None:
    """Concept count, methods, every value and the judge: as the stage outputs give them now."""
    if board["n_concepts"] != report.n_concepts():
        raise _refuse(path, f"n_concepts is {board['n_concepts']}, but the run's stage outputs hold "
                      f"{report.n_concepts()} concepts", rebuild)
    methods = _plain(report.by_method())
    if set(board["methods"]) != set(methods):
        raise _refuse(path, f"its methods ({', '.join(sorted(board['methods']))}) are not the run's "
                      f"({', '.join(sorted(methods))})", rebuild)
    for method, values in methods.items():
        for key in sorted(set(values) | set(board["methods"][method])):
            given, actual = board["methods"][method].get(key), values.get(key)
            if not _same(given, actual):
                raise _refuse(path, f"methods.{method}.{key} is {given!r}, but the run's stage outputs give "
                              f"{actual!r}", rebuild)
    if _plain(board.get("judge_details")) != _plain(report.judge):
        raise _refuse(path, "judge_details do not match the judge recorded in the run's judgements", rebuild)


def _eval_results_run(path: Path) -> Path | None:
    """The run directory of a `<run>/eval/.eval_results/<method>.yaml` file (None for a file elsewhere)."""
    run = path.resolve().parent.parent.parent
    inside = path.resolve().parent.name == EVAL_RESULTS_DIR and path.resolve().parent.parent.name == "eval"
    return run if inside and (run / "config.yaml").is_file() else None


def _check_eval_results(path: Path, verified: VerifiedRun) -> None:
    """The file is the one the verified report writes now (values, intervals, dataset and commit)."""
    run = verified.run_dir
    data = run_benchmark_data(run, verified.board["built_with"].get("dataset_id"))
    expected: bytes | None = None
    if data is not None:
        with tempfile.TemporaryDirectory(prefix="axbench-verify-") as scratch:
            written = write_eval_results(verified.report, Path(scratch), data)
            expected = next((p.read_bytes() for p in written.values() if p.name == path.name), None)
    if expected != path.read_bytes():
        raise _refuse(path, "not the results the run's stage outputs give now (a value, interval, dataset or "
                      "commit differs, or the method has none)",
                      f"rebuild the report (axbench eval report {run}) and publish again")


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
    its only method) or from the file itself: what both `axbench eval push` and `axbench dictionary push` upload.
    A file of a run (`<run>/eval/.eval_results/`) is checked first (`verify_run_for_publishing`), and must be the
    one its verified report writes; a file from elsewhere must hold finite values in their metric's range."""
    path = Path(source)
    if path.is_dir():
        path = eval_results_file(path, method)
    run_dir = _eval_results_run(path)
    if run_dir is not None:
        _check_eval_results(path, verify_run_for_publishing(run_dir))
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise InputError(f"cannot read {path} ({error}); pass a file written by `axbench eval report`.") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "dataset" in e and "value" in e
                                                for e in entries):
        raise InputError(f"{path} is not a list of .eval_results entries (dataset, value).")
    for entry in entries:
        task = str((entry.get("dataset") or {}).get("task_id", ""))
        low, high = _RANGES["steering_score_"] if task.startswith(("steering", "suppression")) else _SHARE
        value = entry["value"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise _refuse(path, f"the {task or 'unnamed'} value is {value!r}, not a number in [{low:g}, {high:g}]",
                          "publish the file `axbench eval report` wrote")
    return path, entries


def publish_eval_results(run_dir: str | Path, repo_id: str, *, method: str | None = None, create_pr: bool = False,
                         repo_type: str = "model", token: str | None = None) -> Published:
    """Upload a method's results to `repo_id` (a model or steering-dictionary repo that must exist)."""
    source, entries = read_eval_results(run_dir, method)
    if not entries:
        raise InputError(f"{source} holds no results; run `axbench eval report` on a run with scores.")
    path_in_repo = eval_results_repo_path(entries)
    commit = HfApi(token=token).create_commit(
        repo_id, [CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=source.read_bytes())],
        repo_type=repo_type, create_pr=create_pr,
        commit_message=f"AxBench results of {source.stem} ({entries[0]['dataset']['id']})")
    return Published(repo_id, path_in_repo, commit.pr_url if create_pr and commit.pr_url else commit.commit_url)


def leaderboard_frame(run_dirs: Sequence[str | Path], dataset_id: str | None = None) -> pd.DataFrame:
    """One row per method × run, from each run's `eval/leaderboard.json` (verified) and `config.yaml`."""
    rows = []
    # Every run is verified before the first row is made: one bad run publishes nothing.
    verified = [verify_run_for_publishing(run_dir) for run_dir in run_dirs]
    for run_dir, board in ((Path(v.run_dir), v.board) for v in verified):
        run = RunDirectory(run_dir)
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
                "n_concepts": max(int(values.get(f"{kind}_n_concepts") or 0)
                                  for kind in ("detection", "steering", "suppression")),
                "judge_model": ", ".join(judge["judge_model"]) if judge else None,
                "judge_templates": ", ".join(judge["judge_template_hash"]) if judge else None,
                "protocol": config.get("run", {}).get("protocol", "fixed"), "run": run_dir.name,
                "suppression_score": values.get("suppression_score_mean"),
                "suppression_ci_low": values.get("suppression_score_ci_low"),
                "suppression_ci_high": values.get("suppression_score_ci_high"),
                "attack_scores": _attack_scores(values),
            })
    return pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))


def _attack_scores(values: dict[str, Any]) -> str | None:
    """The method's mean suppression score under each attack, as JSON {"many-shot-8": …, "overwrite-prefix": …}
    (None without attacks): the attacks differ between runs, and a dataset's columns must not."""
    # keys are attack_<label>_<column> (axeval.report.attack_frames); labels have no "_", so the judge's score is
    # attack_<label>_score_mean and not attack_<label>_lexical_score_mean
    scores = {found.group(1): value for key, value in values.items()
              if (found := re.fullmatch(r"attack_([^_]+)_score_mean", key))}
    return json.dumps(scores) if scores else None


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
    # a leaderboard pushed before suppression was published has no suppression columns: "–" there
    frame = frame.reindex(columns=list(dict.fromkeys([*frame.columns, *LEADERBOARD_COLUMNS])))
    table = pd.DataFrame({
        "Method": frame["method"], "Model": frame["model"], "Layer": frame["layer"],
        "AUROC": [_interval(*row) for row in frame[["auroc", "auroc_ci_low", "auroc_ci_high"]].itertuples(index=False)],
        "Steering": [_interval(*row) for row in
                     frame[["steering_score", "steering_ci_low", "steering_ci_high"]].itertuples(index=False)],
        "Suppression": [_interval(*row) for row in frame[["suppression_score", "suppression_ci_low",
                                                          "suppression_ci_high"]].itertuples(index=False)],
        "Concepts": frame["n_concepts"], "Judge": frame["judge_model"].fillna("–"), "Protocol": frame["protocol"],
        "Dataset": [f"{d}@{(r or '')[:12]} ({c})" if d else "–"
                    for d, r, c in zip(frame["dataset_id"], frame["dataset_revision"], frame["dataset_config"])],
    })
    report = Report(leaderboard=table.sort_values(["Model", "Layer", "Steering"], ascending=[True, True, False]))
    name = title or (f"AxBench leaderboard: {source}" if not isinstance(source, pd.DataFrame) else "AxBench leaderboard")
    return render_html(report, name, {})
