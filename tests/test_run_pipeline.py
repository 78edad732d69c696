"""`axbench run` end to end on a tiny random model and a deterministic stand-in LLM: every stage, resumable."""

from __future__ import annotations

import json

import pandas as pd
import yaml
from fixtures_runs import STAGES, write_run_config
from typer.testing import CliRunner

from axeval.cli import app
from axeval.config import AxbenchConfig
from axeval.pipeline import run_pipeline
from axeval.stages import default_stages


def test_full_run_writes_every_artefact_and_resumes(tmp_path, tiny_llama_dir, judging_llm):
    path, run_dir = write_run_config(tmp_path, tiny_llama_dir, judging_llm)
    result = CliRunner().invoke(app, ["run", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "axbench run summary" in result.output and "diffmean" in result.output

    latent = pd.read_parquet(run_dir / "inference" / "latent.parquet")
    assert set(latent["method"]) == {"diffmean", "reft-r1"}  # prompt steering has no residual read-out
    assert (run_dir / "inference" / "latent_imbalance.parquet").exists()
    steering = pd.read_parquet(run_dir / "inference" / "steering.parquet")
    per_method = steering.groupby("method").size().to_dict()
    # 2 concepts x 4 prompts, x 2 factors for the vector methods, once for the factor-free ones.
    assert per_method == {"diffmean": 16, "reft-r1": 16, "prompt-steering": 8, "unsteered": 8}
    prompt_rows = steering[steering["method"] == "prompt-steering"]
    # The model saw the steering prompt; the judge gets the original instruction, as AxBench's judge does.
    assert prompt_rows["model_instruction"].str.contains("Question: ").all()
    assert not prompt_rows["instruction"].str.contains("Question: ").any()
    judgements = pd.read_parquet(run_dir / "eval" / "judgements.parquet")
    assert len(judgements) == len(steering) and (judgements["parse_status"] == "ok").all()
    report = (run_dir / "eval" / "report.md").read_text()
    for method in ("diffmean", "reft-r1", "prompt-steering"):
        assert method in report
    results = yaml.safe_load((run_dir / "eval" / ".eval_results" / "diffmean.yaml").read_text())
    # The dataset named in the config, and the task of the run's own dataset config (generated: no commit).
    assert {(r["dataset"]["id"], r["dataset"]["task_id"]) for r in results} == {
        ("me/rivers-bench", "concept_detection-tiny-llama-l1"), ("me/rivers-bench", "steering-tiny-llama-l1")}
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["hashes"]["config"] and written["hashes"]["templates"]

    # Everything is current: a second run makes no LLM call and re-runs no stage.
    calls = len(judging_llm.requests)
    config = AxbenchConfig.load(path)
    again = run_pipeline(config, default_stages(config))
    assert [s.name for s in again.stages] == STAGES
    assert {s.status for s in again.stages} == {"skipped"}
    assert len(judging_llm.requests) == calls

    # A changed steering setting re-runs steering and what depends on it, nothing upstream.
    config = AxbenchConfig.load(path, ["inference.factors=[1.0]"])
    third = run_pipeline(config, default_stages(config))
    ran = [s.name for s in third.stages if s.status == "ran"]
    assert ran == ["steering", "judge", "report"]


def test_run_on_an_existing_dataset_skips_generation(tmp_path, tiny_llama_dir, judging_llm):
    path, run_dir = write_run_config(tmp_path, tiny_llama_dir, judging_llm)
    config = AxbenchConfig.load(path, ["methods.train=[diffmean]", "report.baseline=unsteered"])
    run_pipeline(config, default_stages(config)[:3])  # model, llm, data: a dataset to reuse
    reuse = AxbenchConfig.load(path, ["run.name=reuse", f"run.dataset_dir={run_dir / 'data'}",
                                      "methods.train=[diffmean, pca]", "report.baseline=unsteered"])
    stages = default_stages(reuse)
    assert "data" not in [s.name for s in stages]
    result = run_pipeline(reuse, stages)
    assert result.stages[-1].name == "report"
    assert (tmp_path / "runs" / "reuse" / "eval" / "report.md").exists()


def test_run_trains_and_steers_with_reps_family_methods(tmp_path, tiny_llama_dir, judging_llm):
    path, run_dir = write_run_config(tmp_path, tiny_llama_dir, judging_llm)
    config = AxbenchConfig.load(path, ["methods.train=[diffmean]", "report.baseline=unsteered"])
    run_pipeline(config, default_stages(config)[:3])  # a dataset with its preference split
    settings = {"reps": {"num_train_epochs": 1, "inference_factors": [1.0, 4.0], "disable_tqdm": True},
                "reps-lora": {"num_train_epochs": 1, "disable_tqdm": True},
                "lora": {"num_train_epochs": 1, "disable_tqdm": True}}
    reps = AxbenchConfig.load(path, ["run.name=reps", f"run.dataset_dir={run_dir / 'data'}",
                                     "methods.train=[reps, reps-lora, lora]", "report.baseline=reps",
                                     f"methods.settings={json.dumps(settings)}"])
    result = run_pipeline(reps, default_stages(reps))
    assert result.stages[-1].name == "report"
    root = tmp_path / "runs" / "reps"
    latent = pd.read_parquet(root / "inference" / "latent.parquet")
    assert set(latent["method"]) == {"reps"}  # adapters steer only
    dictionary = json.loads((root / "dictionaries" / "reps" / "l1" / "config.json").read_text())
    assert dictionary["calibration_info"]["source"] == "fixed"  # latent inference left it alone
    steering = pd.read_parquet(root / "inference" / "steering.parquet")
    factors = steering.groupby("method")["factor"].apply(lambda f: sorted(f.unique().tolist())).to_dict()
    assert factors["reps"] == [1.0, 4.0]  # the method's own grid, not inference.factors
    assert len(factors["reps-lora"]) == 10 and factors["lora"] == [1.0]
    assert (root / "dictionaries" / "reps-lora" / "peft" / "concept_0" / "adapter_config.json").is_file()
    assert "reps-lora" in (root / "eval" / "report.md").read_text()
