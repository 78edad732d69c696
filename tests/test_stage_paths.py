"""One implementation per stage: the CLI command that does a stage's work writes the same files as `axbench run`.

Each test takes the shared tiny run (`fixtures_runs.tiny_run`), runs the stage's CLI command on that run's own
inputs into a scratch folder, and compares what it wrote with what the pipeline wrote — byte for byte where the
files carry no run-specific path, frame for frame otherwise.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pandas as pd
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

from axeval.cli import app
from axeval.lexical import COLUMN as LEXICAL_COLUMN
from axmethods.dictionary import SteeringDictionary


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def _contents(path: Path) -> object:
    """A file's bytes; a safetensors file's tensors and metadata (its header's key order is not deterministic)."""
    if path.suffix != ".safetensors":
        return path.read_bytes()
    with safe_open(path, "pt") as tensors:
        return tensors.metadata(), {key: tensors.get_tensor(key).tolist() for key in tensors.keys()}


def _config(run_dir: Path) -> dict:
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    written.pop("hashes")
    return written


def _model_args(config: dict) -> list[str]:
    return ["--model", config["model"]["model"], "--dtype", config["model"]["dtype"], "--device", "cpu"]


def test_infer_latent_writes_what_the_latent_stage_writes(tiny_run, tmp_path):
    run_dir, config = tiny_run.run_dir, _config(tiny_run.run_dir)
    dictionaries = tmp_path / "dictionaries"
    shutil.copytree(run_dir / "dictionaries", dictionaries)
    for method in ("diffmean", "reft-r1"):  # back to what the train stage left: no calibration
        trained = SteeringDictionary.load(dictionaries / method)
        assert trained.calibration is not None
        dataclasses.replace(trained, calibration=None, calibration_info={}).save_pretrained(
            dictionaries / method, datasets=[str(run_dir / "data")])
        assert SteeringDictionary.load(dictionaries / method).needs_calibration

    sources = [arg for method in config["methods"]["train"] for arg in ("--result", str(dictionaries / method))]
    batch = ["--batch-size", str(config["inference"]["latent_batch_size"])]
    _invoke("infer", "latent", *sources, "--data", str(run_dir / "data"), "--out", str(tmp_path / "latent.parquet"),
            *batch, *_model_args(config))
    _invoke("infer", "latent", *sources, "--data", str(run_dir / "data"), "--mode", "latent_imbalance",
            "--out", str(tmp_path / "latent_imbalance.parquet"), *batch, *_model_args(config))

    for name in ("latent.parquet", "latent_imbalance.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / name), pd.read_parquet(run_dir / "inference" / name))
    for method in ("diffmean", "reft-r1"):  # the calibration written back, with its card, as the stage wrote it
        for path in sorted((run_dir / "dictionaries" / method).rglob("*")):
            if path.is_file():
                ours = dictionaries / method / path.relative_to(run_dir / "dictionaries" / method)
                assert _contents(ours) == _contents(path), f"{method}: {ours.name} differs"


def test_infer_steer_writes_what_the_steering_stage_writes(tiny_run, tmp_path):
    run_dir, config = tiny_run.run_dir, _config(tiny_run.run_dir)
    inference = config["inference"]
    pipeline = pd.read_parquet(run_dir / "inference" / "steering.parquet")
    for method in ("diffmean", "prompt-steering"):
        out = tmp_path / method / "steering.parquet"
        _invoke("infer", "steer", "--result", str(run_dir / "dictionaries" / method), "--data", str(run_dir / "data"),
                "--out", str(out), "--factors", ",".join(map(str, inference["factors"])),
                "--max-new-tokens", str(inference["max_new_tokens"]), "--batch-size",
                str(inference["steering_batch_size"]), "--seed", str(config["run"]["seed"]), *_model_args(config))
        ours = pd.read_parquet(out)
        assert LEXICAL_COLUMN in ours  # the judge-free score, as in the run
        expected = pipeline[pipeline["method"] == method].reset_index(drop=True)
        pd.testing.assert_frame_equal(ours, expected)
        # The per-method file (with the provenance metadata) is the run's, byte for byte.
        assert (out.parent / "steering" / f"{method}.parquet").read_bytes() == \
            (run_dir / "inference" / "steering" / f"{method}.parquet").read_bytes()


def test_eval_judge_writes_what_the_judge_stage_writes(tiny_run, tmp_path):
    run_dir = tiny_run.run_dir
    calls = len(tiny_run.server.requests)
    out = tmp_path / "judgements.parquet"
    # The run's config (its llm and judge sections) and a copy of its cache: the same answers, no new call.
    shutil.copy(run_dir / "llm-cache.sqlite", tmp_path / "llm-cache.sqlite")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(run_dir)))
    _invoke("eval", "judge", str(run_dir / "inference" / "steering.parquet"), "--config", str(config),
            "--out", str(out))
    assert len(tiny_run.server.requests) == calls
    ours, theirs = pd.read_parquet(out), pd.read_parquet(run_dir / "eval" / "judgements.parquet")
    # Every answer came from the cache: no call, and what the run paid is what this judging reused.
    paid = ["judge_cost_usd", "judge_reused_cost_usd"]
    assert ours["judge_calls"].eq(0).all() and ours["judge_cost_usd"].eq(0).all()
    pd.testing.assert_series_equal(ours[paid].sum(axis=1), theirs[paid].sum(axis=1))
    accounting = [*paid, "judge_calls"]
    pd.testing.assert_frame_equal(ours.drop(columns=accounting), theirs.drop(columns=accounting))
