import pytest
import yaml

from axeval.config import AxbenchConfig, ConfigError


def write(tmp_path, obj):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(obj))
    return path


def test_defaults_and_yaml_sections(tmp_path):
    config = AxbenchConfig.load(write(tmp_path, {"run": {"name": "x", "layer": 3}, "llm": {"max_usd": 2}}))
    assert config.run.name == "x" and config.run.layer == 3
    assert config.llm.max_usd == 2.0 and isinstance(config.llm.max_usd, float)
    assert config.model.model == "smollm2-135m-instruct"
    assert config.run_dir.name == "x"


def test_overrides_are_yaml_typed(tmp_path):
    config = AxbenchConfig.load(write(tmp_path, {}), ["llm.dry_run=false", "run.seed=7", "llm.max_usd=0.25"])
    assert config.llm.dry_run is False  # never the truthy string "false"
    assert config.run.seed == 7 and config.llm.max_usd == 0.25


@pytest.mark.parametrize(
    "raw, overrides, message",
    [
        ({"run": {"nmae": "x"}}, [], "nmae"),
        ({"runs": {}}, [], "unknown section"),
        ({"run": {"seed": "seven"}}, [], "run.seed: expected int"),
        ({"run": ["a"]}, [], "must be a mapping"),
        ({}, ["llm.max_usd"], "section.key=value"),
        ({}, ["lm.max_usd=1"], "unknown section"),
        ({}, ["methods.train=[diffmean, nosuch]"], "Unknown method 'nosuch'"),
        ({}, ["methods.train=[diffmean]"], "report.baseline='prompt-steering' is not among"),
    ],
)
def test_bad_config_names_the_problem(tmp_path, raw, overrides, message):
    with pytest.raises(ConfigError, match=message):
        AxbenchConfig.load(write(tmp_path, raw), overrides)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        AxbenchConfig.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        AxbenchConfig.load(bad)


def test_hash_ignores_run_location_but_not_content(tmp_path):
    a = AxbenchConfig.load(None, ["run.name=a", "run.output_dir=/tmp/a"])
    b = AxbenchConfig.load(None, ["run.name=b"])
    c = AxbenchConfig.load(None, ["run.layer=5"])
    assert a.hash() == b.hash() != c.hash()


def test_round_trip_through_resolved_dict():
    config = AxbenchConfig.load(None, ["llm.max_usd=1.5", "run.layer=4"])
    assert AxbenchConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", ["2b-l10", "2b-l20", "9b-l20", "9b-l31", "2b-l20-reps"])
def test_paper_configs_load(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "paper" / f"{name}.yaml"
    config = AxbenchConfig.load(path)
    assert config.model.model.startswith("google/gemma-2-")
    assert config.llm.model == "gpt-4o-mini" and config.data.num_of_examples == 144
    assert "reft-r1" in config.methods.train and len(config.inference.factors) == 14


def test_unknown_method_settings_fail_at_load():
    with pytest.raises(ConfigError, match=r"methods.settings.reps has no field\(s\) \['lr'\]"):
        AxbenchConfig.load(None, ["methods.train=[reps]", "methods.settings={reps: {lr: 0.1}}"])
    with pytest.raises(ConfigError, match=r"methods.settings.reft-r1 has no field\(s\) \['epoch'\]"):
        AxbenchConfig.load(None, ["methods.settings={reft-r1: {epoch: 1}}"])
    config = AxbenchConfig.load(None, ["methods.train=[reps]", "methods.settings={reps: {learning_rate: 0.1}}",
                                       "report.baseline=null"])
    assert config.methods.settings["reps"] == {"learning_rate": 0.1}


@pytest.mark.parametrize("override, message", [
    ("inference.steering_batch_size=0", "inference.steering_batch_size = 0: must be greater than 0"),
    ("inference.max_new_tokens=-1", "inference.max_new_tokens = -1: must be greater than 0"),
    ("inference.temperature=-1", "inference.temperature = -1.0: must be 0 or more"),
    ("inference.factors=[]", "inference.factors = \\[\\]: give at least one factor"),
    ("inference.top_p=0", "inference.top_p = 0.0: must be in"),
    ("report.n_resamples=-5", "report.n_resamples = -5: must be greater than 0"),
    ("run.layer=-2", "run.layer = -2: must be 0 or more"),
    ("run.name=../../x", "run.name = '../../x': must be one folder name"),
    ("run.name=..", "run.name = '..': must be one folder name"),
    ("methods.settings={probe: {num_train_epochs: -1}}", "methods.settings.probe.num_train_epochs = -1.0: must be greater than 0"),
    ("methods.settings={reps: {learning_rate: 0}}", "methods.settings.reps.learning_rate = 0.0: must be greater"),
    ("methods.settings={reft-r1: {learning_rate: .nan}}", "methods.settings.reft-r1.learning_rate = nan: must be a finite number"),
])
def test_bad_numbers_stop_at_load_naming_the_key(tmp_path, override, message):
    path = tmp_path / "run.yaml"
    path.write_text("run: {name: x}\n")
    with pytest.raises(ConfigError, match=f"{path}: .*{message}"):
        AxbenchConfig.load(path, [override])


def test_method_configs_check_their_numbers_wherever_they_are_built():
    from axmethods.methods import MethodConfigError
    from axmethods.methods.probe import Probe
    from axmethods.registry import get_method

    with pytest.raises(MethodConfigError, match="ProbeConfig.num_train_epochs = -1.0"):
        Probe({"num_train_epochs": "-1"})
    with pytest.raises(MethodConfigError, match="probe.num_train_epochs = -1.0"):
        get_method("probe").settings({"num_train_epochs": "-1"})
    with pytest.raises(ValueError, match="num_train_epochs = 0.0: must be greater than 0"):
        get_method("reps").settings({"num_train_epochs": "0"})
