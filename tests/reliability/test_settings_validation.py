"""One validation for settings, whichever way they come: a config file, `--set`, or a command's flag.

Each bad value goes in all three ways and must end the same: exit 2 (a usage error), one line on stderr that names
the key or the flag, no traceback, and no model loaded (the loaders are replaced by ones that fail the test). The
same ranges hold everywhere (finite factors within ±1000, a non-empty grid, positive batch sizes, `max_new_tokens`
below the model's context read from its config.json), and a numeric text such as `1e30` (a string to YAML 1.1) is
read as the number it is where a number is expected.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from axdata.concepts import Concept
from axdata.safe_yaml import MAX_DEPTH, YAMLInputError, load_untrusted_yaml, load_yaml
from axdata.settings import SettingsError, build_settings, check_flags
from axeval.cli import LOGGERS, main
from axeval.config import AxbenchConfig, ConfigError, InferenceSection
from axmethods.dictionary import SteeringDictionary
from axmethods.methods.base import MethodConfigError
from axmethods.methods.sae import JumpReLUSAE
from axmethods.models import context_length

CONTEXT = 64  # max_position_embeddings of the stand-in model folder below
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(autouse=True)
def _no_cli_logging_afterwards():
    """`main` configures logging as an application does; the rest of the test session must not inherit it."""
    yield
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if h.get_name() == "axbench-cli"]:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every bad setting must be refused before a model loads: any load fails the test."""
    def loaded(*args, **kwargs):
        pytest.fail("a model was loaded before the settings were checked")

    import transformers

    import axeval.pipeline

    monkeypatch.setattr("axmethods.models.load_target_model", loaded)
    monkeypatch.setattr(axeval.pipeline, "load_target_model", loaded, raising=False)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", loaded)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model folder with only a config.json: enough to know its context, nothing to load."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": CONTEXT,
                                                    "hidden_size": 8, "num_attention_heads": 2,
                                                    "num_hidden_layers": 1}))
    return folder


@pytest.fixture
def steer_inputs(tmp_path: Path, model_dir: Path) -> list[str]:
    """`infer steer` arguments up to its flags: a dataset with a steering split and a dictionary on `model_dir`."""
    import pandas as pd

    data = tmp_path / "data" / "cfg"
    data.mkdir(parents=True)
    pd.DataFrame([{"dataset_name": "AlpacaEval", "concept_id": 0, "input_concept": "concept 0", "input_id": 0,
                   "original_prompt": "hello", "half": "selection"}]).to_parquet(data / "steering-00000-of-00001.parquet")
    SteeringDictionary(torch.randn(1, 8), [Concept(0, "concept 0")], 0, "model.layers.0", str(model_dir),
                       "DiffMean").save_pretrained(tmp_path / "dict")
    return ["infer", "steer", "--result", str(tmp_path / "dict"), "--data", str(tmp_path / "data"),
            "--out", str(tmp_path / "out.parquet")]


def _run(capsys: pytest.CaptureFixture, args: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.err


def _assert_refused(code: int, err: str, names: str, problem: str = "") -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err  # one line: the input, the problem, the fix
    assert names in lines[0] and problem in lines[0] and "Traceback" not in err, err


# (case, the config section's value as YAML, what the message names, the problem it states; the flag of
# `infer steer` and its value). A text such as `1e30` or `nan` in YAML is read as the number it names, so the
# problem stated is the number's (out of range, not finite), not "expected float, got '1e30'".
BAD = [
    ("nan factor", "{factors: [.nan]}", "inference.factors", "must be finite", "--factors", "nan"),
    ("nan text factor", "{factors: [nan]}", "inference.factors", "must be finite", "--factors", "0.5,NaN"),
    ("inf factor", "{factors: [.inf]}", "inference.factors", "must be finite", "--factors", "inf"),
    ("1e30 factor", "{factors: [1e30]}", "inference.factors", "within ±1000", "--factors", "1e30"),
    ("-1e30 factor", "{factors: [-1.0e+30]}", "inference.factors", "within ±1000", "--factors", "1,-1e30"),
    ("empty grid", "{factors: []}", "inference.factors", "at least one factor", "--factors", ""),
    ("zero batch", "{steering_batch_size: 0}", "steering_batch_size", "greater than 0", "--batch-size", "0"),
    ("negative batch", "{steering_batch_size: -4}", "steering_batch_size", "greater than 0", "--batch-size", "-4"),
    ("huge max_new_tokens", "{max_new_tokens: 1000000000}", "max_new_tokens", f"holds {CONTEXT} tokens",
     "--max-new-tokens", "1000000000"),
    ("max_new_tokens = context", f"{{max_new_tokens: {CONTEXT}}}", "max_new_tokens", f"holds {CONTEXT} tokens",
     "--max-new-tokens", str(CONTEXT)),
    ("1e30 top_p", "{top_p: 1e30}", "top_p", "must be in (0, 1]", "--top-p", "1e30"),
    ("nan temperature", "{temperature: .nan}", "temperature", "must be a finite number", "--temperature", "nan"),
    ("deep nesting", f"{{factors: {DEEP}}}", "inference", "nested deeper than", "--factors", DEEP),
]
IDS = [case[0] for case in BAD]


def _base_config(tmp_path: Path, model_dir: Path, inference: str = "{}") -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"run: {{output_dir: {tmp_path / 'runs'}, name: r, layer: 0}}\n"
                    f"model: {{model: {model_dir}, device: cpu}}\ninference: {inference}\n")
    return path


@pytest.mark.parametrize("case, value, names, problem, flag, flag_value", BAD, ids=IDS)
def test_a_bad_setting_in_the_config_file_stops_the_run_before_any_model(tmp_path, capsys, model_dir, case, value,
                                                                         names, problem, flag, flag_value) -> None:
    code, err = _run(capsys, ["run", str(_base_config(tmp_path, model_dir, value))])
    # YAML too deep to read names its line and column instead of a key
    _assert_refused(code, err, "" if "nested" in problem else names, problem)
    assert str(tmp_path / "run.yaml") in err  # the message names the file


@pytest.mark.parametrize("case, value, names, problem, flag, flag_value", BAD, ids=IDS)
def test_a_bad_setting_given_with_set_stops_the_run_before_any_model(tmp_path, capsys, model_dir, case, value, names,
                                                                     problem, flag, flag_value) -> None:
    key, _, given = value.strip("{}").partition(": ")
    code, err = _run(capsys, ["run", str(_base_config(tmp_path, model_dir)), "--set", f"inference.{key}={given}"])
    _assert_refused(code, err, names, problem)


@pytest.mark.parametrize("case, value, names, problem, flag, flag_value", BAD, ids=IDS)
def test_a_bad_flag_of_infer_steer_stops_it_before_any_model(capsys, steer_inputs, case, value, names, problem,
                                                             flag, flag_value) -> None:
    code, err = _run(capsys, [*steer_inputs, flag, flag_value])
    _assert_refused(code, err, flag, problem)


@pytest.mark.parametrize("args, flag", [
    (["infer", "latent", "--result", "d", "--data", "d", "--out", "o.parquet", "--batch-size", "0"], "--batch-size"),
    (["infer", "latent", "--result", "d", "--data", "d", "--out", "o.parquet", "--calibration-fallback", "nan"],
     "--calibration-fallback"),
    (["infer", "steer", "--result", "d", "--data", "d", "--out", "o.parquet", "--engine", "turbo"], "--engine"),
    (["train", "diffmean", "--data", "d", "--layer", "-1", "--out", "o"], "--layer"),
    (["train", "diffmean", "--data", "d", "--layer", "0", "--out", "o", "--max-concepts", "0"], "--max-concepts"),
    (["dictionary", "output-score", "d", "--batch-size", "0"], "--batch-size"),
    (["dictionary", "output-score", "d", "--amplification", "inf"], "--amplification"),
    (["eval", "detect", "l.parquet", "--resamples", "0"], "--resamples"),
    (["eval", "steering", "j.parquet", "--resamples", "-1"], "--resamples"),
    (["llm", "serve", "--n-parallel", "0"], "--n-parallel"),
])
def test_numeric_flags_of_other_commands_are_checked_first(capsys, args, flag) -> None:
    code, err = _run(capsys, args)
    _assert_refused(code, err, flag)


@pytest.mark.parametrize("setting", ["learning_rate=nan", "learning_rate=.inf", f"learning_rate={DEEP}",
                                     "per_device_train_batch_size=0"])
def test_train_set_goes_through_the_same_checks(capsys, setting) -> None:
    code, err = _run(capsys, ["train", "reft-r1", "--data", "d", "--layer", "0", "--out", "o", "--set", setting])
    assert code == 2 and "Traceback" not in err and setting.partition("=")[0] in err, err


def test_numeric_texts_are_numbers_where_a_number_is_expected(tmp_path, model_dir) -> None:
    """YAML 1.1 reads `1e3` and `nan` as text; where the field is a number they are that number, in every way in."""
    path = _base_config(tmp_path, model_dir, "{factors: [1e0, 2.5e0, 25e-1], temperature: 5e-1, max_new_tokens: 16}")
    config = AxbenchConfig.load(path, ["inference.top_p=9e-1"])
    assert config.inference.factors == [1.0, 2.5, 2.5]
    assert config.inference.temperature == 0.5 and config.inference.top_p == 0.9
    settings = build_settings(InferenceSection, {"factors": ["2e0", "-.5"], "max_new_tokens": 16}, where="flags")
    assert settings.factors == [2.0, -0.5]
    # a text field keeps its text; an int field does not take a float
    assert AxbenchConfig.load(path, ["run.name=1e3"]).run.name == "1e3"
    with pytest.raises(ConfigError, match=r"steering_batch_size: expected int, got 1000.0"):
        AxbenchConfig.load(path, ["inference.steering_batch_size=1e3"])


def test_max_new_tokens_is_checked_against_the_models_own_context(tmp_path, model_dir) -> None:
    assert context_length(str(model_dir)) == CONTEXT
    assert context_length("smollm2-135m-instruct") == 8192  # embedded: known without reading the GGUF
    assert context_length("no-such-org/no-such-model") is None  # not cached: not downloaded, not checked
    path = _base_config(tmp_path, model_dir)
    with pytest.raises(ConfigError, match="holds 64 tokens"):  # the default, 128, does not fit in this model
        AxbenchConfig.load(path)
    assert AxbenchConfig.load(path, [f"inference.max_new_tokens={CONTEXT - 1}"]).inference.max_new_tokens == CONTEXT - 1
    with pytest.raises(ConfigError, match=rf"inference.max_new_tokens = {CONTEXT}: .* holds {CONTEXT} tokens"):
        AxbenchConfig.load(path, [f"inference.max_new_tokens={CONTEXT}"])
    with pytest.raises(ConfigError, match="holds 8192 tokens"):
        AxbenchConfig.load(None, ["inference.max_new_tokens=8192"])


def test_deep_yaml_is_one_error_not_a_recursion_error() -> None:
    for text in ("[" * 10_000 + "]" * 10_000, "{a: " * 10_000 + "1" + "}" * 10_000,
                 "".join(" " * depth + f"k{depth}:\n" for depth in range(1000))):
        with pytest.raises(YAMLInputError, match=f"nested deeper than {MAX_DEPTH} levels"):
            load_yaml(text, "x.yaml")
        with pytest.raises(YAMLInputError, match=f"nested deeper than {MAX_DEPTH} levels"):
            load_untrusted_yaml(text, "card.md")
    shallow = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_yaml(shallow, "x.yaml") is not None


def test_check_flags_names_the_flag() -> None:
    check_flags("cmd", {"--batch-size": ("batch_size", 8), "--seed": ("seed", None)})
    with pytest.raises(SettingsError, match=r"^cmd --batch-size 0: must be greater than 0\.$"):
        check_flags("cmd", {"--batch-size": ("batch_size", 0)})


@pytest.mark.parametrize("cfg", [[1, 2], "text", {"metadata": [1]}])
def test_a_saelens_cfg_json_that_is_not_an_object_is_named(tmp_path, cfg) -> None:
    from safetensors.torch import save_file

    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    save_file({"W_enc": torch.zeros(4, 2)}, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(MethodConfigError, match="cfg.json is not a JSON object"):
        JumpReLUSAE.load_saelens(tmp_path)
