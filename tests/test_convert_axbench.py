"""Converting AxBench's own training dump (`<dump>/train` + `<dump>/generate/metadata.jsonl`): the layer comes
from --layer or the dump's config.json, and a contradiction between them is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from axbench_dumps import write_axbench_dump
from typer.testing import CliRunner

from axeval.cli import app
from axmethods.convert import convert_axbench
from axmethods.dictionary import DictionaryError, SteeringDictionary


def test_a_train_dump_converts_with_the_layer_of_its_config(tmp_path: Path) -> None:
    train = write_axbench_dump(tmp_path / "axbench_dump", n_concepts=4, hidden_size=8, layer=10)
    dictionary = convert_axbench(train, method="DiffMean", base_model="google/gemma-2-2b-it")
    assert dictionary.layer == 10 and dictionary.hook_module == "model.layers.10"
    assert dictionary.n_concepts == 4 and dictionary.hidden_size == 8
    assert torch.equal(dictionary.weight, torch.load(train / "DiffMean_weight.pt", weights_only=True))
    assert dictionary.concepts[2].ref == "https://np/2"  # read from the dump's generate/metadata.jsonl


def test_layer_flag_agrees_with_or_replaces_the_config(tmp_path: Path) -> None:
    train = write_axbench_dump(tmp_path / "a", layer=20)
    assert convert_axbench(train, method="DiffMean", base_model="m", layer=20).layer == 20
    with pytest.raises(DictionaryError, match=r"--layer 5 contradicts .*config\.json.*layer 20"):
        convert_axbench(train, method="DiffMean", base_model="m", layer=5)
    unrecorded = write_axbench_dump(tmp_path / "b", layer=None)
    with pytest.raises(DictionaryError, match="cannot tell the layer.*pass --layer N"):
        convert_axbench(unrecorded, method="DiffMean", base_model="m")
    assert convert_axbench(unrecorded, method="DiffMean", base_model="m", layer=7).layer == 7


def test_a_broken_config_or_missing_concepts_name_the_file(tmp_path: Path) -> None:
    train = write_axbench_dump(tmp_path / "a")
    (train / "config.json").write_text(json.dumps({"layer": "twenty"}))
    with pytest.raises(DictionaryError, match=r"config\.json: layer is 'twenty'"):
        convert_axbench(train, method="DiffMean", base_model="m")
    (train / "config.json").write_text("{not json")
    with pytest.raises(DictionaryError, match="is not AxBench's train config"):
        convert_axbench(train, method="DiffMean", base_model="m")
    lonely = write_axbench_dump(tmp_path / "b")
    (lonely.parent / "generate" / "metadata.jsonl").unlink()
    with pytest.raises(DictionaryError, match="has no metadata.jsonl"):
        convert_axbench(lonely, method="DiffMean", base_model="m")


def test_cli_converts_a_dump_and_reports_a_contradicting_layer(tmp_path: Path) -> None:
    train = write_axbench_dump(tmp_path / "axbench_dump", layer=12)
    args = ["dictionary", "convert-axbench", str(train), str(tmp_path / "out"), "--method", "DiffMean",
            "--base-model", "google/gemma-2-2b-it"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert SteeringDictionary.load(tmp_path / "out").layer == 12
    refused = CliRunner().invoke(app, [*args[:3], str(tmp_path / "other"), *args[4:], "--layer", "3"])
    assert refused.exit_code == 1
    assert "Conversion failed" in refused.stderr and "--layer 3 contradicts" in refused.stderr
    assert not (tmp_path / "other").exists()
