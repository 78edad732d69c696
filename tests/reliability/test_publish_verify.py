"""Publishing verifies before it uploads: a run whose leaderboard is not what its own stage outputs give now — stages
never ran, a damaged file, a value out of range, an unordered interval, NaN, a wrong concept count, a stale report —
is refused by every command that publishes results, with one line naming the file and field, and nothing reaches
the Hub (the stand-in logs no write request). The complete run still publishes."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from fixtures_hub import HubEnv
from fixtures_runs import TinyRun
from huggingface_hub import HfApi
from test_dictionary import make_dictionary
from typer.testing import CliRunner

from axeval.cli import app

WRITES = ("POST", "PUT", "DELETE", "PATCH")


def _board(run: Path) -> dict:
    return json.loads((run / "eval" / "leaderboard.json").read_text())


def _edit_board(run: Path, edit: Callable[[dict, dict], None]) -> None:
    """Apply `edit(board, values of a method with detection scores)` to the run's leaderboard.json."""
    board = _board(run)
    values = next(v for v in board["methods"].values() if v.get("detection_auroc_mean") is not None)
    edit(board, values)
    (run / "eval" / "leaderboard.json").write_text(json.dumps(board))  # NaN is written as JSON's NaN literal


def _no_stage_outputs(run: Path) -> None:
    for name in ("inference/latent.parquet", "inference/latent_imbalance.parquet", "eval/judgements.parquet"):
        (run / name).unlink(missing_ok=True)
    shutil.rmtree(run / "stages")


def _truncate_judgements(run: Path) -> None:
    path = run / "eval" / "judgements.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _rewrite(name: str, column_suffix: str) -> Callable[[Path], None]:
    """A valid stage output, but not the one the report was built from (one value changed afterwards)."""
    def tamper(run: Path) -> None:
        frame = pd.read_parquet(run / name)
        column = next(c for c in frame.columns if c.endswith(column_suffix) and pd.api.types.is_numeric_dtype(frame[c]))
        frame.loc[frame.index[0], column] = (frame.loc[frame.index[0], column] + 1) % 3
        frame.to_parquet(run / name, index=False)
    return tamper


def _set(key: str, value: object) -> Callable[[Path], None]:
    return lambda run: _edit_board(run, lambda board, values: values.__setitem__(key, value))


def _nudge_auroc(run: Path) -> None:
    def edit(board: dict, values: dict) -> None:
        values["detection_auroc_mean"] = min(1.0, values["detection_auroc_mean"] + 0.01) \
            if values["detection_auroc_mean"] < 0.99 else values["detection_auroc_mean"] - 0.01
    _edit_board(run, edit)


def _wrong_concept_count(run: Path) -> None:
    def edit(board: dict, values: dict) -> None:
        board["n_concepts"] = 500
        values["detection_n_concepts"] = 500
    _edit_board(run, edit)


def _unordered_interval(run: Path) -> None:
    def edit(board: dict, values: dict) -> None:
        values["detection_auroc_ci_low"], values["detection_auroc_ci_high"] = 0.9, 0.1
    _edit_board(run, edit)


def _extra_method(run: Path) -> None:
    _edit_board(run, lambda board, values: board["methods"].__setitem__("forged", dict(values)))


def _truncate_board(run: Path) -> None:
    path = run / "eval" / "leaderboard.json"
    path.write_text(path.read_text()[:200])


# (case, tamper, words the one-line message must hold: the file or field, and the problem)
CASES: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("stages never ran", _no_stage_outputs, ("stages never ran",)),
    ("report stage never finished", lambda run: (run / "stages" / "report.json").unlink(),
     ("report.json", "never finished")),
    ("truncated judgements", _truncate_judgements, ("judgements.parquet", "truncated")),
    ("truncated leaderboard", _truncate_board, ("leaderboard.json", "not readable JSON")),
    ("AUROC 7.5", _set("detection_auroc_mean", 7.5), ("detection_auroc_mean is 7.5", "outside")),
    ("low above high", _unordered_interval, ("detection_auroc_ci_low", "above its high end")),
    ("NaN value", _set("detection_auroc_mean", math.nan), ("detection_auroc_mean is nan", "finite")),
    ("negative count", _set("detection_auroc_n", -3), ("detection_auroc_n is -3", "not a count")),
    ("wrong concept count", _wrong_concept_count, ("n_concepts is 500", "stage outputs hold")),
    ("value edited in range", _nudge_auroc, ("detection_auroc_mean", "stage outputs give")),
    ("forged method", _extra_method, ("leaderboard.json", "forged")),
    ("stale stamp: judgements changed after the report", _rewrite("eval/judgements.parquet", "_rating"),
     ("stale", "eval/judgements.parquet changed")),
    ("stale stamp: latent scores changed after the report", _rewrite("inference/latent.parquet", "score"),
     ("stale", "inference/latent.parquet changed")),
]


def _eval_results(run: Path) -> Path:
    return sorted((run / "eval" / ".eval_results").glob("*.yaml"))[0]


def _push_leaderboard(run: Path, hub: HubEnv, tmp: Path) -> tuple[list[str], str]:
    return ["leaderboard", "push", str(run), hub.repo_id("board")], ""


def _push_eval(run: Path, hub: HubEnv, tmp: Path) -> tuple[list[str], str]:
    repo = hub.repo_id("model")
    HfApi().create_repo(repo)  # `eval push` commits to an existing repo: made before the request log is read
    return ["eval", "push", str(run), repo, "--method", _eval_results(run).stem], repo


def _push_dictionary(run: Path, hub: HubEnv, tmp: Path) -> tuple[list[str], str]:
    make_dictionary(calibration=torch.ones(4)).save_pretrained(tmp / "dict")
    return ["dictionary", "push", str(tmp / "dict"), hub.repo_id("dict"), "--eval-results", str(_eval_results(run))], ""


PUBLISHERS = {"leaderboard push": _push_leaderboard, "eval push": _push_eval, "dictionary push": _push_dictionary}


@pytest.fixture
def run_copy(tiny_run: TinyRun, tmp_path: Path) -> Path:
    """The shared finished run, copied: the tests tamper with their copy only."""
    return Path(shutil.copytree(tiny_run.run_dir, tmp_path / "run"))


def _publish(publisher: str, run: Path, hub: HubEnv, tmp: Path):
    argv, _ = PUBLISHERS[publisher](run, hub, tmp)
    before = len(hub.server.requests)
    result = CliRunner().invoke(app, argv, terminal_width=200)
    writes = [r for r in hub.server.requests[before:] if r[0] in WRITES]
    return result, writes


@pytest.mark.parametrize("publisher", list(PUBLISHERS))
@pytest.mark.parametrize(("case", "tamper", "words"), CASES, ids=[case for case, _, _ in CASES])
def test_a_forged_or_stale_run_is_refused_and_nothing_is_uploaded(
        publisher: str, case: str, tamper: Callable[[Path], None], words: tuple[str, ...], run_copy: Path,
        hub_env: HubEnv, tmp_path: Path) -> None:
    tamper(run_copy)
    result, writes = _publish(publisher, run_copy, hub_env, tmp_path)
    assert result.exit_code in (1, 2), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in words), result.output
    assert "Traceback" not in result.output and "Nothing was uploaded" in lines[0]
    assert writes == [], f"{publisher} wrote to the Hub for a refused run: {writes}"


def test_an_edited_eval_results_file_is_refused(run_copy: Path, hub_env: HubEnv, tmp_path: Path) -> None:
    """The leaderboard is intact but the .eval_results file to upload was edited (a value still in range)."""
    path = _eval_results(run_copy)
    entries = yaml.safe_load(path.read_text())
    entries[0]["value"] = round(entries[0]["value"] + (0.01 if entries[0]["value"] < 0.99 else -0.01), 4)
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    for publisher in ("eval push", "dictionary push"):
        result, writes = _publish(publisher, run_copy, hub_env, tmp_path / publisher.replace(" ", "-"))
        assert result.exit_code == 1 and "not the results the run's stage outputs give" in result.output, \
            result.output
        assert writes == []


@pytest.mark.parametrize("publisher", list(PUBLISHERS))
def test_the_complete_run_still_publishes(publisher: str, run_copy: Path, hub_env: HubEnv, tmp_path: Path) -> None:
    result, writes = _publish(publisher, run_copy, hub_env, tmp_path)
    assert result.exit_code == 0, result.output
    assert any(method == "POST" for method, _ in writes)  # it did upload
