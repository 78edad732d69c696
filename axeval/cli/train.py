"""`axbench train METHOD`: train any method of the registry on a dataset into its result folder."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn

import typer

from axdata.errors import AxbenchError
from axmethods.registry import METHODS  # torch-free: the help below lists every method

_METHOD_LIST = "\n\n".join(f"{spec.name}: {spec.summary}" for spec in METHODS.values())


def train(
    method: str = typer.Argument(..., help="Method name (see the list above; AxBench's class names work too)."),
    data: Path | None = typer.Option(None, "--data", help="Dataset directory (<config>/<split>-*.parquet), e.g. "
                                     "written by `axbench data import` or a run's data/ folder."),
    dataset_config: str | None = typer.Option(None, "--dataset-config", help="Dataset config name; may be left "
                                              "out when the directory holds exactly one."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="Target model: embedded name, .gguf file, "
                              "checkpoint directory or Hub id."),
    layer: int | None = typer.Option(None, "--layer", help="Layer L: read / steer the output of decoder block L "
                                     "(LoRA / LoReFT / SFT methods adapt the layers of their settings instead)."),
    out: Path | None = typer.Option(None, "--out", help="Directory to write: a dictionary (l<L>/weights.safetensors"
                                    ", ...) or, for LoRA / LoReFT / SFT methods, adapters or fine-tuned weights."),
    settings: list[str] = typer.Option([], "--set", "-s", help="Method setting as key=value with a YAML value "
                                       "(repeatable), e.g. --set learning_rate=0.01 --set num_train_epochs=3."),
    list_settings: bool = typer.Option(False, "--list-settings", help="List METHOD's settings with their "
                                       "defaults and help, and exit."),
    dtype: str = typer.Option("auto", "--dtype", help="Model dtype: auto | float32 | bfloat16 | float16."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    max_concepts: int | None = typer.Option(None, "--max-concepts", help="Train only the first N concepts."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a result already at --out (for a dictionary: "
                                   "its layer folder l<L>; other layers stay)."),
) -> None:
    """Train METHOD on a dataset's splits and save its result (dictionary, adapters, weights) to --out."""
    from axdata.builders import read_concepts, read_split, resolve_config
    from axdata.io import check_new_directory
    from axdata.settings import SettingsError, check_flags, parse_assignments
    from axeval.pipeline import locked_run_directories
    from axeval.rundir import enclosing_run_directories
    from axmethods.distributed import is_main
    from axmethods.models import load_target_model
    from axmethods.registry import get_method, settings_help

    spec = get_method(method)
    if list_settings:
        typer.echo("\n".join(settings_help(spec)))
        raise typer.Exit(0)
    # adapters and fine-tuned weights take their layers from settings
    needs_layer = spec.in_layer_folder or spec.result == "hypernetwork"
    missing = [option for option, value in (("--data", data), ("--layer", layer if needs_layer else 0), ("--out", out))
               if value is None]
    if missing:
        raise typer.BadParameter(f"{', '.join(missing)} required to train {spec.name}.")
    check_flags("train", {"--layer": ("layer", layer), "--max-concepts": ("max_concepts", max_concepts)})
    try:  # bad settings fail before the model loads
        method_settings = spec.settings(parse_assignments(settings), layer=layer, where=f"--set ({spec.name})")
    except SettingsError as error:
        raise typer.BadParameter(f"{error} `axbench train {spec.name} --list-settings` lists them.") from None
    try:
        dataset_config = resolve_config(data, dataset_config)
        # Writers never clobber: the folder this result would replace must be new, unless --overwrite (checked
        # before the model loads; a dictionary's other layer folders are other results and stay).
        check_new_directory(out / f"l{layer}" if spec.in_layer_folder else out, overwrite=overwrite)
    except (AxbenchError, OSError) as error:
        _fail(str(error))
    concepts = read_concepts(data, dataset_config)[:max_concepts]
    target = load_target_model(model, dtype=dtype, device=device)

    def split_or_none(split: str) -> Any:
        try:
            return read_split(data, dataset_config, split)
        except FileNotFoundError:
            return None

    started = time.perf_counter()
    # The run directory it writes into (if any) is locked for the whole training, as `axbench run` locks it; every
    # process of a distributed launch enters the lock together (rank 0 holds it and tells the others).
    with ExitStack() as held:
        try:
            held.enter_context(locked_run_directories(enclosing_run_directories([out]), "axbench train"))
            result = spec.train(target, split_or_none, concepts, layer, method_settings, notify=typer.echo)
        except (AxbenchError, OSError) as error:  # TrainingDataError, PreferenceDataError, RunLockedError, …
            _fail(f"Training {spec.name} failed: {error}")
        if not is_main():
            return  # under a distributed launcher every process trained its share; rank 0 writes the result
        folder = result.save_pretrained(out, datasets=[f"{data}/{dataset_config}"])
    where = f" at layer {layer}" if layer is not None else ""
    typer.echo(f"Trained {spec.name} on {len(concepts)} concepts of {data}/{dataset_config}{where} in "
               f"{time.perf_counter() - started:.1f} s; wrote {folder}")
    for key, values in getattr(result, "config", {}).get("training_summary", {}).items():
        if isinstance(values, dict):
            typer.echo(f"  {key}: {values['first']} → {values['last']}")


train.__doc__ = f"{train.__doc__}\n\nMethods:\n\n{_METHOD_LIST}"


def _fail(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(1)
