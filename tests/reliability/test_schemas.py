"""Strict schemas for what is loaded from disk or the Hub: result configs, concept lists, dataset cards, weights.

Each bad field is one error naming the file and the field (never a silent coercion such as
`unsteered_concept_ids: "12"` read as concepts 1 and 2, never an internal error for a string where a number
belongs); partial or non-UTF-8 concept lists stop a dataset pull and fail `data info`; non-finite weights are
refused at load, naming the file and the tensor.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures_hub import HubEnv
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file
from test_builders import CONCEPTS, make_dataset
from test_dictionary import make_dictionary
from typer.testing import CliRunner

from axdata.builders import CONCEPTS_FILE, list_configs, write_concepts
from axdata.builders.hub import pull_dataset, push_dataset
from axdata.concepts import Concept
from axdata.errors import InputError
from axeval.cli import app
from axmethods.dictionary import CONFIG_FILE, WEIGHTS_FILE, DictionaryError
from axmethods.methods.prompt import SteeringPrompts
from axmethods.results import load_result

runner = CliRunner()


def _edit_json(path: Path, change: dict[str, Any], drop: tuple[str, ...] = ()) -> None:
    record = json.loads(path.read_text())
    record.update(change)
    for key in drop:
        record.pop(key)
    path.write_text(json.dumps(record))


# (change to the dictionary's l<layer>/config.json, keys to drop, the field the error must name)
DICTIONARY_CASES = [
    ({"unsteered_concept_ids": "12"}, (), "unsteered_concept_ids"),  # before: read as concepts [1, 2]
    ({"unsteered_concept_ids": [2, "3"]}, (), "unsteered_concept_ids"),
    ({"layer": "0"}, (), "layer"),  # before: an internal error
    ({"layer": True}, (), "layer"),
    ({"format_version": "1"}, (), "format_version"),  # before: an internal error
    ({"format_version": 99}, (), "format_version"),
    ({"hook_module": 5}, (), "hook_module"),
    ({"base_model": None}, (), "base_model"),
    ({"base_model_revision": 3}, (), "base_model_revision"),
    ({"config": ["lr", 0.01]}, (), "config"),
    ({"calibration_info": "max"}, (), "calibration_info"),
    ({"n_concepts": "4"}, (), "n_concepts"),
    ({}, ("hook_module",), "hook_module"),
    ({"method": "NotAMethod"}, (), "method"),  # before: accepted, and published under that name
]


@pytest.mark.parametrize(("change", "drop", "field"), DICTIONARY_CASES,
                         ids=[f"{case[2]}-{i}" for i, case in enumerate(DICTIONARY_CASES)])
def test_a_bad_dictionary_config_field_is_one_error_naming_file_and_field(tmp_path: Path, change: dict,
                                                                          drop: tuple, field: str) -> None:
    folder = make_dictionary().save_pretrained(tmp_path / "dictionary")
    _edit_json(folder / CONFIG_FILE, change, drop)
    with pytest.raises(DictionaryError) as caught:
        load_result(tmp_path / "dictionary")
    message = str(caught.value)
    assert str(folder / CONFIG_FILE) in message and f"'{field}'" in message, message


def test_a_layer_field_that_contradicts_its_folder_is_refused(tmp_path: Path) -> None:
    make_dictionary(layer=1).save_pretrained(tmp_path / "dictionary")
    _edit_json(tmp_path / "dictionary" / "l1" / CONFIG_FILE, {"layer": 7})  # before: steered layer 7 from l1/
    with pytest.raises(DictionaryError, match=r"l1/config\.json: field 'layer' is 7 but the folder is l1/"):
        load_result(tmp_path / "dictionary")
    with pytest.raises(DictionaryError, match="field 'layer' is 7"):
        load_result(tmp_path / "dictionary" / "l1")  # the layer folder itself too


def test_every_kind_of_result_names_a_known_method_and_typed_shared_fields(tmp_path: Path) -> None:
    concepts = [Concept(0, "cats"), Concept(1, "dogs")]
    prompts = SteeringPrompts(prompts={0: "Talk about cats.", 1: "Talk about dogs."}, concepts=concepts,
                              method="prompt-steering", base_model="tiny/llama", layer=0, template="t",
                              template_hash="h")
    for change, field in [({"method": "my-method"}, "method"), ({"format_version": 1.0}, "format_version"),
                          ({"base_model": ["a"]}, "base_model"), ({"config": "x"}, "config")]:
        folder = prompts.save_pretrained(tmp_path / field)
        _edit_json(folder / CONFIG_FILE, change)
        with pytest.raises(DictionaryError, match=rf"{re.escape(str(folder / CONFIG_FILE))}: field '{field}'"):
            load_result(folder)
    assert load_result(prompts.save_pretrained(tmp_path / "fine")).method == "prompt-steering"


def test_non_finite_weights_are_refused_at_load_naming_file_and_tensor(tmp_path: Path) -> None:
    folder = make_dictionary(calibration=torch.ones(4)).save_pretrained(tmp_path / "dictionary")
    tensors = load_file(str(folder / WEIGHTS_FILE))
    tensors["calibration"][1] = float("inf")
    save_file(tensors, str(folder / WEIGHTS_FILE))
    with pytest.raises(DictionaryError, match=rf"{re.escape(str(folder / WEIGHTS_FILE))}: tensor 'calibration' "
                                              r"\(1 of 4 values\) holds NaN or infinite values"):
        load_result(tmp_path / "dictionary")
    # A result kept as a folder (here: steering prompts with a tensors file) is read through the same check.
    prompts = SteeringPrompts(prompts={0: "Talk about cats."}, concepts=[Concept(0, "cats")],
                              method="prompt-steering", base_model="tiny/llama", layer=0, template="t",
                              template_hash="h")
    root = prompts.save_pretrained(tmp_path / "prompts")
    save_file({"delta": torch.tensor([1.0, float("nan")])}, str(root / SteeringPrompts.TENSORS_FILE))
    with pytest.raises(DictionaryError, match=r"tensors\.safetensors: tensor 'delta' \(1 of 2 values\)"):
        load_result(root)


@pytest.mark.parametrize("layout", ["saelens", "gemmascope"])
def test_sae_weights_with_nan_are_refused_at_load_naming_file_and_tensor(tmp_path: Path, layout: str) -> None:
    import numpy as np

    from axmethods.methods.base import MethodConfigError
    from axmethods.methods.sae import SAELENS_WEIGHTS, JumpReLUSAE

    d, z = 8, 16
    params = {"W_enc": torch.randn(d, z), "W_dec": torch.randn(z, d), "b_enc": torch.zeros(z),
              "b_dec": torch.zeros(d), "threshold": torch.rand(z)}
    params["W_dec"][3, 2] = float("nan")  # before: loaded, and blamed on "the method diverged" later
    if layout == "saelens":
        path = tmp_path / "sae"
        path.mkdir()
        (path / "cfg.json").write_text(json.dumps({"architecture": "jumprelu", "d_in": d, "d_sae": z,
                                                   "hook_name": "blocks.1.hook_resid_post"}))
        save_file(params, str(path / SAELENS_WEIGHTS))
        named = path / SAELENS_WEIGHTS
    else:
        path = named = tmp_path / "params.npz"
        np.savez(path, **{key: value.numpy() for key, value in params.items()})
    with pytest.raises(MethodConfigError, match=rf"{re.escape(str(named))}: tensor 'W_dec' \(1 of 128 values\) "
                                                "holds NaN"):
        JumpReLUSAE.load(path)


# ----- datasets: concept lists and the card, at pull time and in `data info` ------------------------------------

def _pushed(hub_env: HubEnv, tmp_path: Path, name: str) -> tuple[str, Path]:
    local = make_dataset(tmp_path / "ds", {"tiny": True})
    repo_id = hub_env.repo_id(name)
    push_dataset(local, repo_id)
    return repo_id, local


# (what replaces tiny/concepts.jsonl or README.md in the repo, the file and field the error names)
PULL_CASES = [
    (f"tiny/{CONCEPTS_FILE}", b'{"concept_id": 0, "concept": "caf\xe9"}\n', r"tiny/concepts\.jsonl, line 1: not "
     "valid UTF-8"),
    (f"tiny/{CONCEPTS_FILE}", b'{"concept_id": 0, "concept": "golden retrievers"}\n',  # 1 of the 2 concepts
     r"tiny/concepts\.jsonl: field 'concept_id': the 'train' split has rows of 1 concepts the file does not "
     r"list \(ids \[1\]\)"),
    (f"tiny/{CONCEPTS_FILE}", b'{"concept_id": "0", "concept": "golden retrievers"}\n', r"tiny/concepts\.jsonl, "
     "line 1: concept_id '0' is not an integer"),
    ("README.md", b"---\nversion: [1, 0]\n---\n# card\n", r"README\.md: field 'version' must be a string"),
]


@pytest.mark.parametrize(("path_in_repo", "content", "message"), PULL_CASES,
                         ids=["not-utf8", "partial", "string-id", "card-version"])
def test_a_pull_with_a_bad_concept_list_or_card_fails_naming_file_and_field(
        hub_env: HubEnv, tmp_path: Path, path_in_repo: str, content: bytes, message: str) -> None:
    repo_id, _ = _pushed(hub_env, tmp_path, "schemas")
    HfApi().upload_file(path_or_fileobj=content, path_in_repo=path_in_repo, repo_id=repo_id, repo_type="dataset")
    with pytest.raises(InputError, match=re.escape(repo_id) + "/" + message):
        pull_dataset(repo_id, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()  # nothing half-checked is left behind
    result = runner.invoke(app, ["data", "pull", repo_id, str(tmp_path / "pulled")])
    assert result.exit_code == 1 and f"{repo_id}/{path_in_repo}" in result.output, result.output


@pytest.mark.parametrize(("content", "problem"), [
    (b'{"concept_id": 0, "concept": "caf\xe9"}\n', "not valid UTF-8"),
    (b'{"concept_id": 1, "concept": "prime numbers"}\n', "field 'concept_id'"),  # 1 of the 2 concepts
], ids=["not-utf8", "partial"])
def test_data_info_fails_on_an_unusable_concept_list_naming_the_file(tmp_path: Path, content: bytes,
                                                                     problem: str) -> None:
    root = make_dataset(tmp_path / "ds", {"tiny": True})
    (root / "tiny" / CONCEPTS_FILE).write_bytes(content)
    result = runner.invoke(app, ["data", "info", str(root)], terminal_width=200)
    assert result.exit_code == 1, result.output  # before: "concepts: unreadable", exit 0
    assert str(root / "tiny" / CONCEPTS_FILE) in result.output and problem in result.output
    assert "config tiny" in result.output  # everything else is still shown


def test_a_whole_concept_list_passes_pull_and_info(hub_env: HubEnv, tmp_path: Path) -> None:
    repo_id, local = _pushed(hub_env, tmp_path, "whole")
    report = pull_dataset(repo_id, tmp_path / "pulled")
    assert list_configs(report.out_dir) == ["tiny"] and report.version == "1.0.0"
    result = runner.invoke(app, ["data", "info", str(report.out_dir)], terminal_width=200)
    assert result.exit_code == 0 and "concepts: 2" in result.output, result.output
    # A list with more concepts than the splits use is fine (a concept may have no rows yet).
    write_concepts([*CONCEPTS, Concept(5, "volcanoes")], local, "tiny")
    assert runner.invoke(app, ["data", "info", str(local)]).exit_code == 0

