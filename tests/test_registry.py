"""The one method registry: names, AxBench's class names, specs that agree with their implementations, and
`axbench train --help` / `--list-settings` built from it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from axdata.settings import SettingsError
from axmethods.registry import METHODS, UnknownMethodError, get_method, settings_help

RANK1 = {"diffmean", "pca", "lat", "probe", "reft-r1", "ssv", "sae", "sae-a", "sae-filtered", "bow",
         "prompt-steering", "prompt-detection", "ig", "ixg"}
FAMILY = {"reps", "reps-lora", "reps-loreft", "bipo", "lang-vector", "lang-lora", "lang-loreft", "loreft", "lora",
          "sft"}
HYPERNET = {"hypersteer"}  # one network for all concepts (axmethods.trainers.hypersteer)


def test_every_method_is_one_entry_found_by_our_name_or_axbench_class_name() -> None:
    assert set(METHODS) == RANK1 | FAMILY | HYPERNET
    assert get_method("LsReFT").name == "reft-r1" and get_method("LinearProbe").name == "probe"
    assert get_method("SAE_A").name == "sae-a" and get_method(" RePS-LoRA ").name == "reps-lora"
    with pytest.raises(UnknownMethodError, match="Unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(KeyError):  # still a lookup error for callers that catch KeyError
        get_method("nope")


RESULT_CLASSES = {"dictionary": "axmethods.dictionary:SteeringDictionary",
                  "adapters": "axmethods.trainers.artifacts:ConceptAdapters",
                  "finetuned": "axmethods.trainers.finetuned:FinetunedConcepts",
                  "bag-of-words": "axmethods.methods.bow:BagOfWords",
                  "steering-prompts": "axmethods.methods.prompt:SteeringPrompts",
                  "relevance-rater": "axmethods.methods.prompt:RelevanceRater",
                  "hypernetwork": "axmethods.methods.hypersteer:HyperSteerResult",
                  "attribution": "axmethods.methods.ig:AttributionDetector"}


@pytest.mark.parametrize("name", sorted(RANK1 | FAMILY | HYPERNET))
def test_specs_agree_with_their_classes_and_result_types(name: str) -> None:
    import importlib

    spec = get_method(name)
    if name in RANK1:
        cls = spec.load()
        assert cls.name == name and spec.settings_class is cls.config_class
    module, _, attribute = RESULT_CLASSES[spec.result].partition(":")
    result = getattr(importlib.import_module(module), attribute)
    assert spec.steers == result.steers and spec.detects == (result.detector is not None)


def test_family_settings_apply_the_preset_then_the_values() -> None:
    lora = get_method("reps-lora").settings({"num_train_epochs": "2"}, layer=3)
    assert lora.parameterisation == "lora" and lora.learning_rate == 0.08 and lora.num_train_epochs == 2.0
    assert lora.steering_factors == [round(0.2 * i, 1) for i in range(1, 11)]
    assert get_method("reps").settings(layer=5).layer == 5
    assert get_method("lang-vector").settings().inference_factors[-1] == 50.0
    with pytest.raises(SettingsError, match=r"has no field\(s\) \['lr'\]"):
        get_method("reps").settings({"lr": 0.1})
    with pytest.raises(SettingsError, match="expected int"):
        get_method("reps").settings({"per_device_train_batch_size": "many"})


@pytest.mark.parametrize("name", ["diffmean", "reps-lora", "sft"])
def test_list_settings_shows_defaults_with_the_preset(name: str) -> None:
    lines = settings_help(get_method(name))
    assert lines[0].startswith(f"{name}: ")
    expected = {"diffmean": "seed = 42", "reps-lora": "learning_rate = 0.08", "sft": "learning_rate = 4e-05"}[name]
    assert any(line.strip().startswith(expected) for line in lines), lines


def test_the_cli_and_the_registry_load_without_torch() -> None:
    code = ("import sys; import axmethods.registry, axeval.cli; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_help_lists_every_method_from_the_registry() -> None:
    from typer.testing import CliRunner

    from axeval.cli import app

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert all(name in result.output for name in METHODS)
