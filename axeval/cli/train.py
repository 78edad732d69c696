"""`axbench train METHOD`: fit one method on a dataset's `train` split into a steering dictionary."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, NoReturn

import typer

logger = logging.getLogger(__name__)


def train(
    method: str = typer.Argument(..., help="Method name: diffmean, pca, lat, probe, reft-r1, ssv, sae, sae-a, bow, "
                                 "prompt-steering, prompt-detection (AxBench class names work too), or a trained "
                                 "steering method: reps, reps-lora, reps-loreft, bipo, lang-vector, lang-lora, "
                                 "lang-loreft, lora, loreft, sft."),
    data: Path = typer.Option(..., "--data", help="Dataset directory (<config>/<split>-*.parquet), e.g. written "
                              "by `axbench data import` or a run's data/ folder."),
    config: str | None = typer.Option(None, "--config", help="Dataset config name; may be left out when the "
                                      "directory holds exactly one."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="Target model: embedded name, .gguf file, "
                              "checkpoint directory or Hub id."),
    layer: int = typer.Option(..., "--layer", help="Layer L: read / steer the output of decoder block L (LoRA / "
                              "LoReFT / SFT methods adapt the layers of their config instead)."),
    out: Path = typer.Option(..., "--out", help="Directory to write: a dictionary (l<L>/weights.safetensors, ...) "
                             "or, for LoRA / LoReFT / SFT methods, adapters (adapters.safetensors, peft/, ...)."),
    settings: list[str] = typer.Option([], "--set", help="Method config field as key=value (repeatable), e.g. "
                                       "--set epochs=3 --set lr=0.01; `--set help=1` lists the fields."),
    dtype: str = typer.Option("auto", "--dtype", help="Model dtype: auto | float32 | bfloat16 | float16."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    max_concepts: int | None = typer.Option(None, "--max-concepts", help="Train only the first N concepts."),
) -> None:
    """Fit METHOD on the `train` split and save the steering dictionary to --out."""
    import dataclasses

    from axdata.builders import read_concepts, read_split
    from axmethods.methods import MethodConfigError, TrainingDataError, get_method, parse_config
    from axmethods.models import load_target_model
    from axmethods.trainers.presets import is_trained_method

    if is_trained_method(method):
        _train_steering(method, data, config, model, layer, out, _parse_settings(settings), dtype, device,
                        max_concepts)
        return
    try:
        method_class = get_method(method)
    except KeyError as error:
        _fail(str(error.args[0]))
    overrides = _parse_settings(settings)
    if "help" in overrides:
        for item in dataclasses.fields(method_class.config_class):
            typer.echo(f"{item.name} (default {item.default!r}): {item.metadata.get('help', '')}")
        raise typer.Exit(0)
    try:
        method_config = parse_config(method_class.config_class, overrides)
    except MethodConfigError as error:
        _fail(str(error))

    config = _dataset_config(data, config)
    concepts = read_concepts(data, config)[:max_concepts]
    train_df = read_split(data, config, "train")

    target = load_target_model(model, dtype=dtype, device=device)
    kwargs = {}
    if method_class.name == "prompt-steering" and method_config.llm_prompts:
        from axmethods.chat_backend import TransformersChatBackend

        # Without a configured generator LLM, the target model itself writes the steering instructions.
        kwargs["backend"] = TransformersChatBackend(target)
    started = time.perf_counter()
    try:
        dictionary = method_class(method_config, **kwargs).fit(target, train_df, concepts, layer)
    except (TrainingDataError, MethodConfigError, ValueError, FileNotFoundError) as error:
        _fail(f"Training {method_class.name} failed: {error}")
    folder = dictionary.save(out)
    typer.echo(f"Trained {method_class.name} on {len(concepts)} concepts of {data}/{config} at layer {layer} in "
               f"{time.perf_counter() - started:.1f} s; wrote {folder}")


def _train_steering(name: str, data: Path, config: str | None, model: str, layer: int, out: Path,
                    overrides: dict[str, str], dtype: str, device: str, max_concepts: int | None) -> None:
    """RePS-family and SFT methods: their config is a TrainingArguments subclass; RePS ones train on preference pairs."""
    import dataclasses

    from axdata.builders import read_concepts, read_split
    from axmethods.models import load_target_model
    from axmethods.trainers import PreferenceDataError, get_trained_method, train_steering_method
    from axmethods.trainers.artifacts import save_artifact
    from axmethods.trainers.presets import training_frame

    method = get_trained_method(name)
    if "help" in overrides:
        config_class = method.config_class
        typer.echo(f"{method.name}: {method.description}\nPreset: {dict(method.preset)}")
        for item in dataclasses.fields(config_class):
            if item.name in config_class.__annotations__:  # the family's own fields and overridden defaults
                default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
                typer.echo(f"{item.name} (default {default!r}): {item.metadata.get('help', '')}")
        typer.echo("Every transformers TrainingArguments field can be set too.")
        raise typer.Exit(0)
    config = _dataset_config(data, config)
    concepts = read_concepts(data, config)[:max_concepts]
    try:
        method_config = method.config(overrides, layer=layer)  # bad settings fail before the model loads
    except ValueError as error:
        _fail(str(error))
    target = load_target_model(model, dtype=dtype, device=device)
    started = time.perf_counter()
    try:
        def split_or_none(split: str) -> Any:
            try:
                return read_split(data, config, split)
            except FileNotFoundError:
                return None

        frame = training_frame(method.name, target, concepts, split_or_none, method_config, notify=typer.echo)
        artifact = train_steering_method(method.name, target, frame, concepts, method_config, progress=typer.echo)
    except (PreferenceDataError, ValueError, FileNotFoundError) as error:
        _fail(f"Training {method.name} failed: {error}")
    folder = save_artifact(artifact, out, datasets=[f"{data}/{config}"])
    typer.echo(f"Trained {method.name} on {len(concepts)} concepts of {data}/{config} in "
               f"{time.perf_counter() - started:.1f} s; wrote {folder}")
    for key, values in artifact.config.get("training_summary", {}).items():
        if isinstance(values, dict):
            typer.echo(f"  {key}: {values['first']} → {values['last']}")


def _dataset_config(data: Path, config: str | None) -> str:
    """--config, or the dataset's only config."""
    from axdata.builders import list_configs

    configs = list_configs(data)
    if config is None:
        if len(configs) != 1:
            _fail(f"{data} holds dataset configs {configs or 'none'}; pick one with --config NAME.")
        return configs[0]
    if config not in configs:
        _fail(f"{data} has no dataset config {config!r}; it holds {configs or 'none'}.")
    return config


def _parse_settings(settings: list[str]) -> dict[str, str]:
    values = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            _fail(f"--set {setting!r} is not key=value; write e.g. --set lr=0.01.")
        values[key.strip().replace("-", "_")] = value.strip()
    return values


def _fail(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(1)
