"""The four stage commands under a distributed launcher: `torchrun --nproc_per_node 2` on CPU (gloo).

A one-process run (in this process) and a two-process run (torchrun) of `train` (a closed-form and a
Trainer-trained method), `infer latent`, `infer steer` and a small `axbench run` give the same files:
identical steering generations and latent token columns, scores and weights within float tolerance
(measured: see docs/benchmarks.md "Many processes"). Rank 1 writes nothing; a killed run resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_run_pipeline import JudgingServer
from typer.testing import CliRunner

from axeval.cli import app
from axmethods.dictionary import SteeringDictionary
from axmethods.distributed import gather, shard, unshard, world_size

pytestmark = pytest.mark.slow
TORCHRUN = Path(sys.executable).with_name("torchrun")
AXBENCH = Path(sys.executable).with_name("axbench")
ATOL = 1e-5  # scores / weights: float reduction order differs with batch composition; measured max ~1e-7


def test_one_process_helpers_are_the_identity():
    assert world_size() == 1
    assert shard([3, 1, 2]) == [3, 1, 2] and gather("x") == ["x"]
    assert unshard([[0, 2, 4], [1, 3]]) == [0, 1, 2, 3, 4]


def torchrun(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *args]
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
    concepts = root / "concepts.csv"
    concepts.write_text("rivers and river banks,https://example.org/0\nPython list comprehensions,\n")
    config = {
        "run": {"name": "one", "output_dir": str(root / "runs"), "layer": 1},
        "model": {"model": str(tiny_llama_dir), "device": "cpu", "dtype": "float32"},
        "llm": {"endpoint": llm_server.base_url, "model": "gpt-4o-mini", "backoff_base_s": 0.0,
                "structured_output": "json_schema"},
        "data": {"concept_path": str(concepts), "num_of_examples": 4, "output_length": 8,
                 "latent_num_of_examples": 4, "imbalance_factor": 2, "steering_num_of_examples": 4},
        # concepts_per_chunk 1: two chunks, so two processes split DiffMean's concepts.
        "methods": {"train": ["diffmean", "probe"],
                    "settings": {"diffmean": {"concepts_per_chunk": 1},
                                 "probe": {"num_train_epochs": 2, "per_device_train_batch_size": 2,
                                           "gradient_accumulation_steps": 2}}},
        "inference": {"factors": [0.5, 2.0], "max_new_tokens": 6, "steering_batch_size": 4,
                      "latent_batch_size": 4},
        "report": {"baseline": "unsteered", "n_resamples": 20},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
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


def test_commands_under_torchrun_match_one_process(one_process, tmp_path, tiny_llama_dir):
    """train diffmean / probe, infer latent and infer steer: two processes write what one process writes."""
    _, _, run = one_process
    data = run / "data"
    model = ["--model", str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32"]
    train = ["train", "--data", str(data), "--layer", "1", *model]
    probe = ["--set", "num_train_epochs=2", "--set", "per_device_train_batch_size=2"]
    commands = {  # name → (arguments, arguments of the matching one-process run)
        "diffmean": [train[0], "diffmean", *train[1:], "--set", "concepts_per_chunk=1"],
        # Data parallelism: 2 processes × 1 accumulated micro-batch = the one-process run's 2 micro-batches a step.
        "probe": [train[0], "probe", *train[1:], *probe, "--set", "gradient_accumulation_steps=1"],
        "latent": ["infer", "latent", "--data", str(data), *model, "--batch-size", "3"],
        "steer": ["infer", "steer", "--data", str(data), *model, "--factors", "0.5,2", "--max-new-tokens", "5",
                  "--batch-size", "3"],
    }
    outputs = {"one": tmp_path / "one", "two": tmp_path / "two"}
    runs: dict[str, list[list[str]]] = {"one": [], "two": []}
    for name, out in outputs.items():
        dicts = out / "dicts"
        runs[name] = [
            [*commands["diffmean"], "--out", str(dicts / "diffmean")],
            [*commands["probe"], "--out", str(dicts / "probe")] if name == "two" else
            [*commands["probe"][:-2], "--set", "gradient_accumulation_steps=2", "--out", str(dicts / "probe")],
            [*commands["latent"], "--dictionary", str(dicts / "diffmean"), "--dictionary", str(dicts / "probe"),
             "--out", str(out / "latent.parquet")],
            [*commands["steer"], "--dictionary", str(dicts / "diffmean"), "--out", str(out / "steering.parquet")],
        ]
    for arguments in runs["one"]:
        result = CliRunner().invoke(app, arguments, terminal_width=200)
        assert result.exit_code == 0, result.output
    driver = tmp_path / "driver.py"  # one launch for the four commands (each torchrun start costs seconds)
    driver.write_text("import json, sys\nfrom axeval.cli import main\n"
                      "for arguments in json.loads(sys.argv[1]):\n"
                      "    try:\n        main(arguments)\n"
                      "    except SystemExit as done:\n"
                      "        assert done.code in (0, None), (arguments, done.code)\n")
    result = torchrun(str(driver), json.dumps(runs["two"]), cwd=tmp_path)
    for process in ("process 1 of 2", "process 2 of 2"):
        assert result.stderr.count(process) == 1, result.stderr[-3000:]

    one, two = outputs["one"], outputs["two"]
    for method in ("diffmean", "probe"):
        a, b = _weights(one / "dicts" / method), _weights(two / "dicts" / method)
        assert a.concept_ids == b.concept_ids
        assert float((a.weight - b.weight).abs().max()) <= ATOL, method
    _same_frames(pd.read_parquet(one / "latent.parquet"), pd.read_parquet(two / "latent.parquet"))
    _same_frames(pd.read_parquet(one / "steering.parquet"), pd.read_parquet(two / "steering.parquet"),
                 float_columns=("magnitude",))
    # Rank 1 wrote nothing: no part files, no temporary files, only what rank 0 writes.
    assert sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())


def test_run_under_torchrun_matches_one_process_and_resumes(one_process, tiny_llama_dir):
    """`axbench run` with two processes: rank 0 alone generates data and judges; the files equal the one-process
    run's; a second launch finds every stage current."""
    root, path, one = one_process
    config = yaml.safe_load(path.read_text())
    config["run"]["name"] = "two"
    # Two processes × 1 accumulated micro-batch: the one-process run's two micro-batches per step.
    config["methods"]["settings"]["probe"]["gradient_accumulation_steps"] = 1
    two_path = root / "two.yaml"
    two_path.write_text(yaml.safe_dump(config))
    first = torchrun(str(AXBENCH), "run", str(two_path), cwd=root)
    assert "axbench run summary" in first.stdout and first.stdout.count("axbench run summary") == 1
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
    assert a["generation"].tolist() == b["generation"].tolist()
    assert not list(two.rglob("*.parts")) and not list(two.rglob(".*.tmp"))
    assert not (two / ".axbench.lock.owner").exists()

    # Killed after training: the stamps of the later stages are gone; a new launch resumes from there.
    for stage in ("latent", "steering", "judge", "report"):
        (two / "stages" / f"{stage}.json").unlink()
    shutil.rmtree(two / "eval")
    again = torchrun(str(AXBENCH), "run", str(two_path), cwd=root)
    assert again.stdout.count("skipped") >= 4  # model, llm, data, train
    assert (two / "eval" / "report.md").exists()
