"""SIGKILL `axbench run` inside each stage in turn, run it again, and get exactly the artefacts of an uninterrupted
run.

Tiny random model and a deterministic LLM stand-in (`test_run_pipeline`'s): the killed process gets no chance to
clean up, so this checks what the atomic writes, part files, stamps and caches promise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from fixtures_runs import STAGES, write_run_config
from typer.testing import CliRunner

from axeval.cli import app

RATINGS = ["concept_rating", "instruction_rating", "fluency_rating", "parse_status"]


def _artefacts(run_dir: Path) -> dict[str, pd.DataFrame]:
    frames = {str(path.relative_to(run_dir)): pd.read_parquet(path)
              for path in sorted(run_dir.rglob("*.parquet")) if ".parts" not in str(path)}
    if "eval/judgements.parquet" in frames:  # what a resumed judge paid differs (cache hits); the ratings do not
        frames["eval/judgements.parquet"] = frames["eval/judgements.parquet"][RATINGS]
    return frames


def _config(root: Path, tiny_llama_dir: Path, server) -> tuple[Path, Path]:
    root.mkdir(parents=True)
    return write_run_config(root, tiny_llama_dir, server)


def _run_in_process(config: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(config)], terminal_width=200)
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_a_run_killed_in_every_stage_in_turn_ends_with_the_artefacts_of_an_uninterrupted_run(
        tmp_path, tiny_llama_dir, judging_llm, tiny_run):
    # The uninterrupted run is the session's `tiny_run`: the same config (`write_run_config`'s defaults).
    expected = _artefacts(tiny_run.run_dir)
    assert "eval/judgements.parquet" in expected and "inference/steering.parquet" in expected
    # One run directory, killed once inside each stage: every restart resumes from what the kills left.
    config, run_dir = _config(tmp_path / "killed", tiny_llama_dir, judging_llm)
    for index, stage in enumerate(STAGES):
        started = run_dir / "config.yaml" if index == 0 else run_dir / "stages" / f"{STAGES[index - 1]}.json"
        process = subprocess.Popen([sys.executable, "-c", "from axeval.cli import main; main()", "run", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not started.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # inside the stage (or just past it: a kill anywhere must be harmless)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert not (run_dir / "stages" / "report.json").exists(), f"the run finished before the kill in {stage}"
    _run_in_process(config)
    resumed = _artefacts(run_dir)
    assert sorted(resumed) == sorted(expected)
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(resumed[name].reset_index(drop=True), frame.reset_index(drop=True), obj=name)
