"""The `data` stage: generation inside a run directory, with the stand-in LLM and with the real embedded one."""

from __future__ import annotations

import json

import pytest
from generation_helpers import RoutingServer

from axdata.builders import list_splits, read_concepts, read_provenance, read_split
from axdata.generation.config import DataGenerationConfig
from axdata.generation.report import cost_projection
from axdata.llm.ledger import Ledger
from axeval.config import AxbenchConfig
from axeval.pipeline import StageError, run_pipeline
from axeval.stages.data import DataStage, default_dataset_config


def _concepts(tmp_path):
    path = tmp_path / "concepts.csv"
    path.write_text("rivers and river banks,https://example.org/0\nPython list comprehensions,\n")
    return path


def _config(tmp_path, endpoint: str, model: str, tiny_llama_dir) -> AxbenchConfig:
    return AxbenchConfig.load(None, [f"run.output_dir={tmp_path}", "run.name=r", "run.layer=1",
                                     f"llm.endpoint={endpoint}", f"llm.model={model}", "llm.backoff_base_s=0",
                                     f"model.model={tiny_llama_dir}", "model.device=cpu", "model.dtype=float32"])


def test_dataset_config_name_from_model_and_layer():
    assert default_dataset_config("google/gemma-2-2b-it", 20) == "gemma-2-2b-it-l20"
    assert default_dataset_config("/tmp/x/Tiny Llama/", 1) == "tiny-llama-l1"


def test_stage_writes_the_dataset_and_is_skipped_when_current(tmp_path, tiny_llama_dir):
    server = RoutingServer().start()
    try:
        config = _config(tmp_path, server.base_url, "gpt-4o-mini", tiny_llama_dir)
        data = DataGenerationConfig(concept_path=str(_concepts(tmp_path)), num_of_examples=4, output_length=8,
                                latent_num_of_examples=2, imbalance_factor=2, steering_num_of_examples=2)
        stage = DataStage(data)
        first = run_pipeline(config, [stage])
        calls = len(server.requests)
        second = run_pipeline(config, [stage])
    finally:
        server.stop()
    name = default_dataset_config(str(tiny_llama_dir), 1)
    assert first.stages[0].status == "ran" and second.stages[0].status == "skipped" and len(server.requests) == calls
    data_dir = tmp_path / "r" / "data"
    assert list_splits(data_dir, name) == ["train", "latent", "latent_imbalance", "steering", "preference"]
    assert [c.genre for c in read_concepts(data_dir, name)] == ["text", "code"]
    summary = first.stages[0].summary
    assert summary["rows"]["train"] == 6 + 4 and summary["failures"] == 0
    assert summary["training_usd_per_concept_at_gpt_4o_mini"] < 0.01
    assert (tmp_path / "r" / "generation_report.json").exists()
    provenance = read_provenance(data_dir)["generation"][name]
    assert provenance["generator_model"] == "gpt-4o-mini" and provenance["template_hashes"]


def test_stage_without_concepts_names_the_fix(tmp_path, tiny_llama_dir):
    config = _config(tmp_path, "http://127.0.0.1:9/v1", "gpt-4o-mini", tiny_llama_dir)
    with pytest.raises(StageError, match="stage 'data' failed: data.concept_path is not set") as raised:
        run_pipeline(config, [DataStage(DataGenerationConfig())])
    assert isinstance(raised.value.__cause__, ValueError)  # the cause is chained (--debug shows it)


@pytest.mark.slow
def test_embedded_llm_end_to_end_with_cost_projection(tmp_path, tiny_llama_dir, embedded_server):
    """The real embedded SmolLM2 writes the responses: structure and accounting, not quality."""
    config = _config(tmp_path, embedded_server.base_url, embedded_server.model, tiny_llama_dir)
    data = DataGenerationConfig(concept_path=str(_concepts(tmp_path)), num_of_examples=4, output_length=8,
                            splits=["train"])
    result = run_pipeline(config, [DataStage(data)])
    name = default_dataset_config(str(tiny_llama_dir), 1)
    data_dir = tmp_path / "r" / "data"
    train = read_split(data_dir, name, "train")
    report = json.loads((tmp_path / "r" / "generation_report.json").read_text())
    produced = report["steps"]["positive"]["produced"]
    failed = [f for f in report["failures"] if f["step"] == "positive"]
    assert produced + len(failed) == 4 and (train.category == "positive").sum() == produced
    assert (train.concept_id == -1).sum() == 6
    assert report["ledger"]["by_purpose"]["positive"]["calls"] >= 4
    assert set(report["ledger"]["by_concept"]) >= {"0", "1"}
    assert report["ledger"]["total"]["cost_usd"] == 0.0  # a local model is free…
    # …and at gpt-4o-mini prices, with every response running to the paper's token cap, still < $0.01.
    entries = Ledger(tmp_path / "r" / "llm-ledger.jsonl").entries
    paper = cost_projection(entries, embedded_server.model, max_tokens=160)
    assert paper["training_worst_case_usd_per_concept"] < 0.01
    assert result.stages[0].summary["llm_calls"] > 0


@pytest.mark.skipif(not hasattr(AxbenchConfig(), "data"), reason="DataGenerationConfig is not yet the run config's "
                    "`data` section (axeval.config.SECTIONS)")
def test_cli_generate(tmp_path, tiny_llama_dir):
    import typer
    from typer.testing import CliRunner

    from axeval.cli.data_generate import generate

    app = typer.Typer()
    app.command()(generate)
    app.command("unused")(lambda: None)  # two commands, so `generate` is addressed by name
    server = RoutingServer().start()
    try:
        args = ["generate", "--concepts", str(_concepts(tmp_path)), "--out", str(tmp_path / "ds"),
                "--dataset-config", "tiny"]
        for item in (f"run.output_dir={tmp_path}", "run.name=r", f"llm.endpoint={server.base_url}",
                     "llm.model=gpt-4o-mini", f"model.model={tiny_llama_dir}", "model.device=cpu",
                     "data.num_of_examples=4", "data.output_length=8", "data.latent_num_of_examples=2",
                     "data.imbalance_factor=2", "data.steering_num_of_examples=2"):
            args += ["--set", item]
        result = CliRunner().invoke(app, args)
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    assert list_splits(tmp_path / "ds", "tiny") == ["train", "latent", "latent_imbalance", "steering", "preference"]
    assert "failures listed in" in result.output
    # --out elsewhere: nothing lands in the config's run directory; the working files sit beside the dataset.
    assert not (tmp_path / "r").exists()
    assert (tmp_path / "ds.generation" / "generation_report.json").exists()
