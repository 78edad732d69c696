"""The four stage commands under a distributed launcher: `torchrun --nproc_per_node 2` on CPU (gloo).

A one-process run (in this process) and a two-process run (torchrun) of `train` (a closed-form and a
Trainer-trained method), `infer latent`, `infer steer` and a small `axbench run` give the same files:
identical steering generations and latent token columns, scores and weights within float tolerance
(measured: see docs/benchmarks.md "Many processes"). Rank 1 writes nothing; a run whose processes are SIGKILLed
resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fixtures_runs import JudgingServer, write_run_config
from typer.testing import CliRunner

from axeval.cli import app
from axmethods.dictionary import SteeringDictionary
from axmethods.distributed import gather, shard, unshard, world_size

TORCHRUN = Path(sys.executable).with_name("torchrun")
AXBENCH = Path(sys.executable).with_name("axbench")
ATOL = 1e-5  # scores / weights: float reduction order differs with batch composition; measured max ~1e-7


def test_one_process_helpers_are_the_identity():
    assert world_size() == 1
    assert shard([3, 1, 2]) == [3, 1, 2] and gather("x") == ["x"]
    assert unshard([[0, 2, 4], [1, 3]]) == [0, 1, 2, 3, 4]


def torchrun_launch(*args: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a 2-process CPU launch of `args`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *args], env


def torchrun(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    command, env = torchrun_launch(*args)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    ours = "\n".join(line for line in result.stderr.splitlines() if "axbench" in line or "Error" in line)
    assert result.returncode == 0, result.stdout[-3000:] + ours[-6000:]
    return result


@pytest.fixture(scope="module")
def llm_server():
    server = JudgingServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_llama_dir, llm_server):
    """A small run in one process: its dataset, dictionaries and inference files are the reference."""
    root = tmp_path_factory.mktemp("dist")
    path, _ = write_run_config(
        root, tiny_llama_dir, llm_server, name="one",
        # concepts_per_chunk 1: two chunks, so two processes split DiffMean's concepts.
        methods={"train": ["diffmean", "probe"],
                 "settings": {"diffmean": {"concepts_per_chunk": 1},
                              "probe": {"num_train_epochs": 2, "per_device_train_batch_size": 2,
                                        "gradient_accumulation_steps": 2}}},
        inference={"factors": [0.5, 2.0], "max_new_tokens": 6, "steering_batch_size": 4, "latent_batch_size": 4},
        report={"baseline": "unsteered", "n_resamples": 20})
    result = CliRunner().invoke(app, ["run", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    return root, path, root / "runs" / "one"


def _same_frames(one: pd.DataFrame, two: pd.DataFrame, float_columns: tuple[str, ...] = ("score",)) -> float:
    """Equal frames (floats within ATOL); returns the largest float difference seen."""
    assert list(one.columns) == list(two.columns) and len(one) == len(two)
    worst = 0.0
    for column in one.columns:
        if column in float_columns:
            a, b = one[column].to_numpy(float), two[column].to_numpy(float)
            assert np.allclose(a, b, atol=ATOL, rtol=0, equal_nan=True), column
            worst = max(worst, float(np.nanmax(np.abs(a - b))) if len(a) else 0.0)
        else:
            pd.testing.assert_series_equal(one[column], two[column], check_dtype=False)
    return worst


def _weights(folder: Path, layer: int = 1):
    return SteeringDictionary.load(folder / f"l{layer}")


@pytest.fixture(scope="module")
def two_processes(one_process, tiny_llama_dir):
    """One torchrun launch (each start costs seconds) running train diffmean / probe, infer latent, infer steer
    and `axbench run`; the same commands in one process (here) for comparison."""
    root, path, run = one_process
    data = run / "data"
    model = ["--model", str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32"]
    train = ["--data", str(data), "--layer", "1", *model]
    probe = ["--set", "num_train_epochs=2", "--set", "per_device_train_batch_size=2"]
    commands: dict[str, list[list[str]]] = {}
    for name in ("one", "two"):
        out, dicts = root / name, root / name / "dicts"
        commands[name] = [
            ["train", "diffmean", *train, "--set", "concepts_per_chunk=1", "--out", str(dicts / "diffmean")],
            # Data parallelism: 2 processes × 1 accumulated micro-batch = one process's 2 micro-batches a step.
            ["train", "probe", *train, *probe, "--set", f"gradient_accumulation_steps={2 if name == 'one' else 1}",
             "--out", str(dicts / "probe")],
            ["infer", "latent", "--data", str(data), *model, "--batch-size", "3", "--result",
             str(dicts / "diffmean"), "--result", str(dicts / "probe"), "--out", str(out / "latent.parquet")],
            ["infer", "steer", "--data", str(data), *model, "--factors", "0.5,2", "--max-new-tokens", "5",
             "--batch-size", "3", "--result", str(dicts / "diffmean"), "--out", str(out / "steering.parquet")],
        ]
    for arguments in commands["one"]:
        result = CliRunner().invoke(app, arguments, terminal_width=200)
        assert result.exit_code == 0, result.output
    config = yaml.safe_load(path.read_text())
    config["run"]["name"] = "two"
    config["methods"]["settings"]["probe"]["gradient_accumulation_steps"] = 1  # as above
    two_path = root / "two.yaml"
    two_path.write_text(yaml.safe_dump(config))
    driver = root / "driver.py"
    driver.write_text("import json, sys\nfrom axeval.cli import main\n"
                      "for arguments in json.loads(sys.argv[1]):\n"
                      "    try:\n        main(arguments)\n"
                      "    except SystemExit as done:\n"
                      "        assert done.code in (0, None), (arguments, done.code)\n")
    result = torchrun(str(driver), json.dumps([*commands["two"], ["run", str(two_path)]]), cwd=root)
    return root, two_path, result


@pytest.mark.slow  # torchrun launches: ~2 min for the file on 2 busy cores
def test_commands_under_torchrun_match_one_process(two_processes):
    """train diffmean / probe, infer latent and infer steer: two processes write what one process writes."""
    root, _, result = two_processes
    for process in ("process 1 of 2", "process 2 of 2"):
        assert result.stderr.count(process) == 1, result.stderr[-3000:]  # once, though it ran five commands
    one, two = root / "one", root / "two"
    for method in ("diffmean", "probe"):
        a, b = _weights(one / "dicts" / method), _weights(two / "dicts" / method)
        assert a.concept_ids == b.concept_ids
        assert float((a.weight - b.weight).abs().max()) <= ATOL, method
        assert float((a.calibration - b.calibration).abs().max()) <= ATOL, method  # written back by rank 0
    _same_frames(pd.read_parquet(one / "latent.parquet"), pd.read_parquet(two / "latent.parquet"))
    _same_frames(pd.read_parquet(one / "steering.parquet"), pd.read_parquet(two / "steering.parquet"),
                 float_columns=("magnitude",))
    # Rank 1 wrote nothing: no part files, no temporary files, only what rank 0 writes.
    assert sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())


@pytest.mark.slow  # torchrun launches: ~2 min for the file on 2 busy cores
def test_run_under_torchrun_matches_one_process_and_resumes(one_process, two_processes):
    """`axbench run` with two processes: rank 0 alone generates data and judges; the files equal the one-process
    run's; a launch after a kill resumes."""
    _, _, one = one_process
    root, two_path, first = two_processes
    assert first.stdout.count("axbench run summary") == 1  # rank 0 prints it
    two = root / "runs" / "two"
    for split in ("train", "latent", "steering"):
        pd.testing.assert_frame_equal(pd.read_parquet(next((one / "data").glob(f"*/{split}-*.parquet"))),
                                      pd.read_parquet(next((two / "data").glob(f"*/{split}-*.parquet"))))
    _same_frames(pd.read_parquet(one / "inference" / "latent.parquet"),
                 pd.read_parquet(two / "inference" / "latent.parquet"))
    steering = ("magnitude", "lexical_concept_score")
    a, b = (pd.read_parquet(run / "inference" / "steering.parquet") for run in (one, two))
    _same_frames(a, b, float_columns=tuple(c for c in a.columns if c in steering))
    a, b = (pd.read_parquet(run / "eval" / "judgements.parquet") for run in (one, two))
    bill = [c for c in a.columns if c.startswith("judge_") and ("cost" in c or "calls" in c)]  # cache hits differ
    pd.testing.assert_frame_equal(a.drop(columns=bill), b.drop(columns=bill))
    a, b = (json.loads((run / "eval" / "leaderboard.json").read_text()) for run in (one, two))
    assert a["methods"] == b["methods"]  # the leaderboard rows; the judge's bill differs (second launch: cache)
    assert not list(two.rglob("*.parts")) and not list(two.rglob(".*.tmp"))
    assert not (two / ".axbench.lock.owner").exists()

    # SIGKILL a launch (torchrun and both workers) inside the stages after `latent`, then launch again: it resumes
    # and ends with the files of the uninterrupted runs.
    for stage in ("latent", "steering", "judge", "report"):
        (two / "stages" / f"{stage}.json").unlink()
    shutil.rmtree(two / "eval")
    (two / "inference" / "steering.parquet").unlink()
    command, env = torchrun_launch(str(AXBENCH), "run", str(two_path))
    launch = subprocess.Popen(command, cwd=root, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (two / "stages" / "latent.json").exists() and launch.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert launch.poll() is None, "the launch ended before its latent stage did"
    time.sleep(0.3)  # inside steering or the judge (a kill anywhere must be harmless)
    os.killpg(launch.pid, signal.SIGKILL)
    launch.wait()
    assert not (two / "stages" / "report.json").exists(), "the launch finished before the kill"
    again = torchrun(str(AXBENCH), "run", str(two_path), cwd=root)  # the real entry point this time
    for process in ("process 1 of 2", "process 2 of 2"):
        assert again.stderr.count(process) == 1, again.stderr[-3000:]
    assert again.stdout.count("skipped") >= 5  # model, llm, data, train, latent
    a, b = (pd.read_parquet(run / "inference" / "steering.parquet") for run in (one, two))
    _same_frames(a, b, float_columns=tuple(c for c in a.columns if c in steering))
    a, b = (json.loads((run / "eval" / "leaderboard.json").read_text()) for run in (one, two))
    assert a["methods"] == b["methods"]
    assert not list(two.rglob("*.parts")) and not list(two.rglob(".*.tmp"))


class _Failing:
    name, distributed = "judge", False

    def run(self, ctx):
        raise RuntimeError("the LLM server is down")


def test_a_stage_rank_0_runs_alone_stops_the_others_with_its_error(monkeypatch):
    """A rank-0-only stage (data, judge): rank 0 broadcasts its outcome, so a failure there stops every process
    with rank 0's message instead of leaving them waiting at a barrier."""
    from axeval import pipeline

    sent = []
    monkeypatch.setattr(pipeline, "world_size", lambda: 2)
    monkeypatch.setattr(pipeline, "is_main", lambda: True)
    monkeypatch.setattr(pipeline, "broadcast", lambda value: sent.append(value) or value)
    with pytest.raises(RuntimeError, match="server is down"):
        pipeline._run_stage(_Failing(), ctx=None)
    assert sent == [(None, "RuntimeError: the LLM server is down")]
    # Rank 1 receives that outcome and stops with it.
    monkeypatch.setattr(pipeline, "is_main", lambda: False)
    monkeypatch.setattr(pipeline, "broadcast", lambda value: sent[0])
    with pytest.raises(pipeline.OtherProcessError, match="rank 0 failed: RuntimeError: the LLM server is down"):
        pipeline._run_stage(_Failing(), ctx=None)
