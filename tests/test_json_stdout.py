"""Every `--json` prints parseable JSON: stdout carries only the command's result, logs and progress go to stderr.

The commands are found by walking the CLI, so a new `--json` command fails `test_every_json_command_has_a_case`
until it gets a case here. Each case runs through `axeval.cli.main` — the real entry point, which installs the
real log handler — on the shared finished run (`fixtures_runs.tiny_run`, copied where a command writes) or on
minimal inputs, and its stdout goes through `json.loads`. `eval report` also runs as a real process, as
`axbench eval report RUN --json | jq` would.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import typer

from axeval.cli import LOGGERS, app, main


def json_commands() -> set[tuple[str, ...]]:
    """The path (e.g. ("eval", "report")) of every command with a `--json` option, hidden ones included."""
    found: set[tuple[str, ...]] = set()

    def walk(command, path: tuple[str, ...]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))
        if any("--json" in getattr(param, "opts", ()) for param in command.params):
            found.add(path)

    walk(typer.main.get_command(app), ())
    return found


def _labels_folder(root: Path) -> Path:
    """A labels folder as `axbench curate fetch` writes it: two annotators, three records."""
    from axeval.curation.labels import write_labels

    ratings = {"judge_concept": [2, 1, 0, 2], "human_concept": [2, 1, 0, 1], "judge_instruction": [2, 2, 1, 2],
               "human_instruction": [2, 1, 1, 2], "judge_fluency": [2, 2, 2, 1], "human_fluency": [2, 2, 1, 1]}
    labels = pd.DataFrame({"record_id": ["a", "b", "c", "a"], "annotator": ["ann", "ann", "ann", "bob"], **ratings,
                           "note": "", "instruction": "i", "concept": "c", "response": "r", "method": "diffmean"})
    return write_labels(labels, root / "labels", {"dataset": "review", "workspace": "argilla", "rating_offset": 0})


def _report_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"  # eval report writes into RUN_DIR/eval; the session's run is shared
    shutil.copytree(run_dir, copy)
    return copy


# Each case builds its argv (after `axbench`) from the shared run directory and a scratch folder.
CASES: dict[tuple[str, ...], Callable[[Path, Path], list[str]]] = {
    ("eval", "detect"): lambda run, tmp: ["eval", "detect", str(run / "inference" / "latent.parquet"), "--json"],
    ("eval", "steering"): lambda run, tmp: ["eval", "steering", str(run / "eval" / "judgements.parquet"), "--json"],
    ("eval", "report"): lambda run, tmp: ["eval", "report", str(_report_run(run, tmp)), "--json"],
    ("curate", "agreement"): lambda run, tmp: ["curate", "agreement", str(_labels_folder(tmp)), "--json"],
}


def test_every_json_command_has_a_case() -> None:
    assert json_commands() == set(CASES), "give each command with --json a case in CASES (and drop stale ones)"


@pytest.fixture
def cli_logging():
    """`main` installs the CLI's log handler on our loggers; take it off again so other tests see no change."""
    saved = {name: logging.getLogger(name).level for name in LOGGERS}
    yield
    for name, level in saved.items():
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if h.get_name() == "axbench-cli"]:
            logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize("command", sorted(CASES), ids=" ".join)
def test_json_stdout_is_only_json(command, tiny_run, tmp_path, capsys, cli_logging) -> None:
    argv = CASES[command](tiny_run.run_dir, tmp_path)
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    assert done.value.code in (0, None), captured.err[-3000:]
    payload = json.loads(captured.out)  # the whole of stdout, nothing before or after
    assert isinstance(payload, dict) and payload
    if command == ("eval", "report"):  # the command that logs: its INFO line is on stderr, not lost
        assert "Wrote the report" in captured.err


@pytest.mark.slow  # ~25 s on a shared 2-core machine, nearly all of it the new interpreter's imports
def test_eval_report_json_pipes_from_a_real_process(tiny_run, tmp_path) -> None:
    # A real process: the entry point's own handlers and streams, as `axbench eval report RUN --json | jq` sees them;
    # the in-process cases above share pytest's streams, this one checks nothing between them is what works.
    run = _report_run(tiny_run.run_dir, tmp_path)
    done = subprocess.run([sys.executable, "-c", "from axeval.cli import main; main()", "eval", "report", str(run),
                           "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    methods = json.loads(done.stdout)
    assert set(methods) >= {"diffmean", "reft-r1"}
    assert "Wrote the report" in done.stderr
