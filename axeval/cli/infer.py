"""`axbench infer latent|steer`: detection scores and steered generations from any result of `axbench train`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from axdata.errors import AxbenchError, InputError
from axeval.cli.grammar import one_of_renamed, renamed_option

infer_app = typer.Typer(help="Run latent (detection) and steered inference with any result (--result).",
                        no_args_is_help=True)

_RESULT_HELP = ("A result folder (or Hub model repo id) written by `axbench train` / `dictionary pull`, of any kind: "
                "steering dictionary, BoW, prompt steering or detection, adapters, fine-tuned weights.")
_RESULT_WHAT = "DIR_OR_REPO (a result of `axbench train`)"
# `--dictionary`, the old spelling of `--result` (hidden; one line on stderr when used), until the next release.
_OLD_LATENT_DICTIONARY = renamed_option("--dictionary", "--result", "infer latent")
_OLD_STEER_DICTIONARY = renamed_option("--dictionary", "--result", "infer steer")


def _load_results(dictionaries: list[str], layer: int | None) -> list[Any]:
    from axmethods.results import load_result

    return [load_result(source, layer=layer) for source in dictionaries]


def _target_spec(loaded: list[Any], model: str | None) -> Any:
    """Which target model `loaded` runs on: `--model`, else the result's base model at its recorded revision (an
    embedded model's dictionary loads it offline)."""
    from axmethods.models import TargetModelConfig

    return TargetModelConfig(model=model) if model else \
        TargetModelConfig(model=loaded[0].base_model, revision=loaded[0].base_model_revision)


def _load_target(loaded: list[Any], model: str | None, dtype: str, device: str, spec: Any = None) -> Any:
    """The target model of `loaded` (checked against each of them)."""
    from axmethods.models import load_target_model

    target = load_target_model(spec or _target_spec(loaded, model), dtype=dtype, device=device)
    for result in loaded:
        result.check_model(target)
    return target


def _fail(error: Exception) -> typer.Exit:
    typer.echo(f"Inference failed: {error}", err=True)
    return typer.Exit(1)


@infer_app.command("latent")
def latent(
    result: list[str] | None = typer.Option(None, "--result", help=_RESULT_HELP + " Required; repeat to score "
                                                                                "several."),
    dictionary: list[str] | None = _OLD_LATENT_DICTIONARY,
    data: Path = typer.Option(..., "--data", help="Dataset directory (<config>/<split>-*.parquet)."),
    config: str | None = typer.Option(None, "--dataset-config", help="Dataset config, e.g. gemma-2-2b-it-l20; "
                                                              "optional when the dataset holds only one."),
    out: Path = typer.Option(..., "--out", help="Output parquet."),
    model: str | None = typer.Option(None, "--model", help="Target model; default: the result's base model."),
    mode: str = typer.Option("latent", "--mode", help="latent | latent_imbalance."),
    layer: int | None = typer.Option(None, "--layer", help="Layer folder to read when a result holds several."),
    batch_size: int = typer.Option(16, "--batch-size"),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16."),
    device: str = typer.Option("auto", "--device"),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                   help="In latent mode, write the per-concept max activation back into each "
                                        "local dictionary directory (the steering calibration)."),
    fallback: float | None = typer.Option(None, "--calibration-fallback",
                                          help="Magnitude for concepts whose max activation is ≤ 0 (AxBench: 50); "
                                               "default: the median of the positive maxima."),
) -> None:
    """Score every eval row for every concept of every result (residual dictionaries in one forward pass per
    batch, BoW on the transcripts, prompt detection through the target model; steering-only methods are skipped);
    calibrate the residual dictionaries. The same latent stage as `axbench run` (`axeval.stages.methods`)."""
    from axdata.builders import resolve_config
    from axdata.settings import build_from_flags, check_flags
    from axeval.config import InferenceSection
    from axeval.pipeline import locked_run_directories
    from axeval.rundir import enclosing_run_directories
    from axeval.stages.dataset import RunDataset
    from axeval.stages.methods import score_latent
    from axmethods.distributed import is_main
    from axmethods.inference.latent import LATENT_MODES

    sources = one_of_renamed(result, dictionary, "--result", _RESULT_WHAT)
    # The same checks as the config's inference section and `--set` (a usage error, before anything loads).
    build_from_flags(InferenceSection, "infer latent", {"--batch-size": ("latent_batch_size", batch_size)})
    check_flags("infer latent", {"--calibration-fallback": ("calibration_fallback", fallback)})
    try:
        if mode not in LATENT_MODES:
            raise ValueError(f"--mode {mode!r} is unknown; use one of {', '.join(LATENT_MODES)}.")
        dataset = RunDataset(data, resolve_config(data, config))
        loaded = _load_results(sources, layer)
        for skipped in loaded:
            if not skipped.detector:
                typer.echo(f"Skipped {skipped.method}: its {skipped.KIND} steer but have no detector.", err=True)
        if not any(result.detector for result in loaded):
            raise InputError("none of --result detects; latent inference needs a detector (a dictionary, BoW "
                             "or prompt detection).")
        imbalance = mode == "latent_imbalance"
        calibrate_into = [_local_folder(source) for source in sources] if calibrate and not imbalance else None
        # Every run directory it writes into (the scores, a calibrated dictionary) is locked, as `axbench run` is.
        with locked_run_directories(enclosing_run_directories([out, *(calibrate_into or ())]), "axbench infer latent"):
            target = _load_target(loaded, model, dtype, device)
            summary = score_latent(target, loaded, dataset, None if imbalance else out,
                                   imbalance_out=out if imbalance else None, batch_size=batch_size,
                                   calibration_fallback=fallback, calibrate_into=calibrate_into)
    except (AxbenchError, OSError) as error:
        raise _fail(error) from None
    if not is_main():
        return  # under a distributed launcher every process scored its share; rank 0 wrote them
    typer.echo(f"Wrote {summary['imbalance_rows'] if imbalance else summary['rows']} scores to {out}")
    for method, count in summary.get("imbalance_nan_scores" if imbalance else "nan_scores", {}).items():
        if count:
            typer.echo(f"{method}: {count} scores are NaN (answers without a parsable rating)", err=True)
    for source, loaded_result in zip(sources, loaded):
        method = loaded_result.method
        if method in summary.get("calibration_not_written", ()):
            typer.echo(f"{source} is a Hub repo: calibration not written back (pull it first).", err=True)
        elif method in summary.get("calibrated", ()):
            typer.echo(f"Calibrated {method} in {source}")
        elif method in summary.get("uncalibrated", {}):
            typer.echo(f"Not calibrated {method} ({source}): {summary['uncalibrated'][method]}", err=True)
    if summary.get("uncalibrated"):
        raise _fail(ValueError(f"{', '.join(summary['uncalibrated'])} could not be calibrated (above); the scores are "
                               "written. Pass --calibration-fallback <magnitude> to calibrate them anyway."))


def _local_folder(source: str) -> Path | None:
    """Where a calibrated dictionary is written back: its local folder (the root, given a layer folder); None for a
    Hub repo id."""
    from axmethods.dictionary import WEIGHTS_FILE

    path = Path(source)
    if not path.exists():
        return None
    return path.parent if (path / WEIGHTS_FILE).is_file() else path


@infer_app.command("steer")
def steer(
    result: str | None = typer.Option(None, "--result", help=_RESULT_HELP + " Required."),
    dictionary: str | None = _OLD_STEER_DICTIONARY,
    data: Path = typer.Option(..., "--data", help="Dataset directory (<config>/<split>-*.parquet)."),
    config: str | None = typer.Option(None, "--dataset-config", help="Dataset config, e.g. gemma-2-2b-it-l20; "
                                                              "optional when the dataset holds only one."),
    out: Path = typer.Option(..., "--out", help="Output parquet (part files beside it make re-runs resume)."),
    model: str | None = typer.Option(None, "--model", help="Target model; default: the result's base model."),
    factors: str | None = typer.Option(None, "--factors",
                                       help="Comma-separated steering factors (α = factor × calibration); default: "
                                            "the method's own grid (RePS family) or AxBench's 14 factors."),
    layer: int | None = typer.Option(None, "--layer", help="Layer folder to read when the result holds several."),
    intervention: str = typer.Option("addition", "--intervention",
                                     help="addition | clamp | subtract_add | threshold | ablate."),
    positions: str = typer.Option("all", "--positions", help="Steered tokens: all (every token: chat prefix, prompt, "
                                  "generated) | after_prefix (every token after the chat prefix, generated ones too). "
                                  "Not a method's training setting intervention_positions (all | prompt)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_k: int = typer.Option(50, "--top-k", help="Sample from the k most likely tokens (AxBench: HF's default 50); "
                                                  "0 = the full vocabulary."),
    top_p: float = typer.Option(1.0, "--top-p"),
    seed: int = typer.Option(42, "--seed"),
    batch_size: int = typer.Option(32, "--batch-size"),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16."),
    device: str = typer.Option("auto", "--device"),
    engine: str = typer.Option("eager", "--engine",
                               help="eager | compiled (static KV cache and a torch.compile'd step, for GPUs; same "
                                    "generations; steerers it cannot run stay eager, with a logged line)."),
) -> None:
    """Generate a steered answer for every (concept, prompt, factor) row of the steering split: the same steering
    stage as `axbench run` (`axeval.stages.methods`), for one result and without the unsteered baseline."""
    from axdata.builders import resolve_config
    from axdata.settings import SettingsError, build_from_flags, check_flags
    from axeval.config import InferenceSection, check_max_new_tokens
    from axeval.pipeline import locked_run_directories
    from axeval.rundir import enclosing_run_directories
    from axeval.stages.dataset import RunDataset
    from axeval.stages.methods import generate_steering, plan_steerers
    from axmethods.distributed import is_main

    sources = one_of_renamed([result] if result else None, [dictionary] if dictionary else None, "--result",
                             _RESULT_WHAT)
    if len(sources) > 1:
        raise typer.BadParameter("infer steer steers with one result; pass --result once.", param_hint="'--result'")
    # The flags are the config's inference section: the same checks as `axbench run` and `--set` (a SettingsError is
    # a usage error, before anything loads). Each factor is read as a setting value is, so `--factors ""` is an
    # empty grid (refused), not "the default grid".
    flags = {"--max-new-tokens": ("max_new_tokens", max_new_tokens), "--temperature": ("temperature", temperature),
             "--top-k": ("top_k", top_k), "--top-p": ("top_p", top_p), "--intervention": ("intervention", intervention),
             "--positions": ("positions", positions), "--batch-size": ("steering_batch_size", batch_size),
             "--engine": ("engine", engine)}
    if factors is not None:
        flags["--factors"] = ("factors", [value.strip() for value in factors.split(",") if value.strip()])
    settings = build_from_flags(InferenceSection, "infer steer", flags, unsteered_baseline=False)
    check_flags("infer steer", {"--seed": ("seed", seed)})
    try:
        dataset = RunDataset(data, resolve_config(data, config))
        (loaded,) = _load_results(sources, layer)
        target_spec = _target_spec([loaded], model)
        check_max_new_tokens(settings.max_new_tokens, target_spec, "infer steer --max-new-tokens")
        # Refused before the model loads: a detection-only result (BoW, prompt detection), an intervention it
        # lacks, an uncalibrated dictionary, a dictionary for none of the dataset's concepts.
        steerers, _ = plan_steerers([loaded], dataset.split("steering"), settings, strict=True)
        if factors is not None and getattr(steerers[0], "factors", None):
            typer.echo(f"{loaded.method} steers with its own factor grid {steerers[0].factors} (as in `axbench run`); "
                       "--factors is not used for it.", err=True)
        # The run directory it writes into (if any) is locked, as `axbench run` and `infer latent` lock it.
        with locked_run_directories(enclosing_run_directories([out]), "axbench infer steer"):
            target = _load_target([loaded], model, dtype, device, spec=target_spec)
            summary = generate_steering(target, steerers, dataset, out, settings=settings, seed=seed)
    except SettingsError:
        raise  # a usage error (exit 2), as the flags' checks above
    except (AxbenchError, OSError) as error:
        raise _fail(error) from None
    if is_main():  # the other processes of a distributed launch generated their share; rank 0 wrote it
        typer.echo(f"Wrote {summary['generations']} steered generations to {out}")


def _comma_list(text: str | None) -> list[str] | None:
    return None if text is None else [value.strip() for value in text.split(",") if value.strip()]


@infer_app.command("suppress")
def suppress(
    result: list[str] = typer.Option([], "--result", help=_RESULT_HELP + " Repeat for several; none: only the "
                                     "defence prompts and the unsteered model."),
    data: Path = typer.Option(..., "--data", help="Dataset directory with a suppression split (attack_shots too "
                              "for --many-shot)."),
    config: str | None = typer.Option(None, "--dataset-config", help="Dataset config; optional when the dataset "
                                                                     "holds only one."),
    out: Path = typer.Option(..., "--out", help="Output parquet (part files beside it make re-runs resume)."),
    model: str | None = typer.Option(None, "--model", help="Target model; default: the results' base model "
                                     "(required without --result)."),
    factors: str | None = typer.Option(None, "--factors", help="Comma-separated suppression strengths: each method "
                                       "steers with -factor (default: AxBench's 14 factors; RePS family: its grid)."),
    defences: str = typer.Option("system,prepend,append", "--defences",
                                 help="Defence prompts: system, prepend, append (the first text); system-rewrite, "
                                      "prepend-rewrite, append-rewrite (the split's second text, defence_rewrite); "
                                      "'' for none."),
    many_shot: str = typer.Option("", "--many-shot", help="Many-shot attack strengths, e.g. 2,8 ('' for none)."),
    overwrite: str = typer.Option("", "--overwrite", help="Overwrite attacks: prefix, postfix ('' for none)."),
    unsteered: bool = typer.Option(True, "--unsteered/--no-unsteered", help="Also the unsteered model's answers."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_k: int = typer.Option(50, "--top-k"),
    top_p: float = typer.Option(1.0, "--top-p"),
    seed: int = typer.Option(42, "--seed"),
    batch_size: int = typer.Option(32, "--batch-size"),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16."),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Generate the suppression rows (methods at -factor, defence prompts, unsteered) with the attacks asked for:
    the same suppression stage as `axbench run` (`axeval.stages.suppression`); judge them with `axbench eval judge`."""
    from axdata.builders import resolve_config
    from axdata.settings import SettingsError, build_from_flags, check_flags
    from axeval.config import InferenceSection, check_max_new_tokens
    from axeval.modes import DefenceSteerer, EvaluationSection
    from axeval.pipeline import locked_run_directories
    from axeval.rundir import enclosing_run_directories
    from axeval.stages.dataset import RunDataset
    from axeval.stages.methods import plan_steerers
    from axeval.stages.suppression import generate_suppression, suppressing
    from axmethods.contract import UnsteeredBaseline
    from axmethods.distributed import is_main

    flags = {"--max-new-tokens": ("max_new_tokens", max_new_tokens), "--temperature": ("temperature", temperature),
             "--top-k": ("top_k", top_k), "--top-p": ("top_p", top_p), "--batch-size": ("steering_batch_size", batch_size)}
    settings = build_from_flags(InferenceSection, "infer suppress", flags, unsteered_baseline=False)
    shots = [int(n) if n.isdigit() else n for n in _comma_list(many_shot) or []]
    attacks = {"--defences": ("defences", _comma_list(defences)), "--many-shot": ("many_shot", shots),
               "--overwrite": ("overwrite", _comma_list(overwrite))}
    if factors is not None:
        attacks["--factors"] = ("suppression_factors", _comma_list(factors))
    check_flags("infer suppress", {"--seed": ("seed", seed)})
    try:
        evaluation = build_from_flags(EvaluationSection, "infer suppress", attacks,
                                      modes=["suppression", "attacks"] if shots or _comma_list(overwrite)
                                      else ["suppression"])
        dataset = RunDataset(data, resolve_config(data, config))
        if not dataset.has_split("suppression"):
            raise InputError(f"--data {data}: the dataset has no suppression split; generate it (`axbench data "
                             "generate` with suppression in data.splits).")
        loaded = _load_results(result, None) if result else []
        if not loaded and model is None:
            raise InputError("infer suppress without --result needs --model (the model the defence prompts and the "
                             "unsteered answers come from).")
        target_spec = _target_spec(loaded, model)
        check_max_new_tokens(settings.max_new_tokens, target_spec, "infer suppress --max-new-tokens")
        planned, _ = plan_steerers(loaded, dataset.split("suppression"), settings, strict=True)
        steerers, skipped = suppressing(planned)
        if skipped:  # a result the user named cannot suppress: refused, as `infer steer` refuses what cannot steer
            raise InputError(" ".join(skipped.values()) + "; drop it from --result.")
        steerers += [DefenceSteerer(placement) for placement in evaluation.defences]
        if unsteered:
            steerers.append(UnsteeredBaseline())
        with locked_run_directories(enclosing_run_directories([out]), "axbench infer suppress"):
            target = _load_target(loaded, model, dtype, device, spec=target_spec)
            summary = generate_suppression(target, steerers, dataset, out, settings=settings, evaluation=evaluation,
                                           seed=seed)
    except SettingsError:
        raise
    except (AxbenchError, OSError) as error:
        raise _fail(error) from None
    if is_main():
        typer.echo(f"Wrote {summary['generations']} suppression generations to {out}")
