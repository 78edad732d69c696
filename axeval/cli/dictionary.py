"""`axbench dictionary push|pull|convert-axbench`: move steering dictionaries between disk, the Hub and AxBench."""

from __future__ import annotations

from pathlib import Path

import typer

dictionary_app = typer.Typer(help="Publish, download and convert steering dictionaries.", no_args_is_help=True)


@dictionary_app.command("push")
def push(
    directory: Path = typer.Argument(..., help="Dictionary directory (holding l<layer>/ folders), or an adapters / "
                                     "fine-tuned folder of a trained method."),
    repo_id: str = typer.Argument(..., help="Hub model repo, e.g. me/gemma-2-2b-it-l20-diffmean."),
    layer: int | None = typer.Option(None, "--layer", help="Layer folder to push when the directory holds several."),
    private: bool = typer.Option(False, "--private/--public"),
    revision: str | None = typer.Option(None, "--revision", help="Branch to push to."),
    dataset: list[str] = typer.Option([], "--dataset", help="Training dataset id for the card (repeatable)."),
    eval_results: Path | None = typer.Option(None, "--eval-results",
                                             help="The dictionary's results, RUN_DIR/eval/.eval_results/<method>.yaml "
                                             "(axbench eval report): into the card's model-index and the repo's "
                                             ".eval_results/axbench.yaml. Default: the run's own, for a dictionary "
                                             "inside a run directory."),
    allow_uncalibrated: bool = typer.Option(False, "--allow-uncalibrated",
                                            help="Push a steering dictionary that has no calibration yet (nobody "
                                            "can steer with it before running latent inference)."),
) -> None:
    """Upload a dictionary layer folder (or a trained method's adapters / fine-tuned weights) and its card."""
    from axmethods.dictionary import DictionaryError, SteeringDictionary
    from axmethods.results import load_result

    try:
        artifact = load_result(directory, layer=layer)
    except (DictionaryError, FileNotFoundError) as error:
        typer.echo(f"Push failed: {error}", err=True)
        raise typer.Exit(1) from None
    if isinstance(artifact, SteeringDictionary) and artifact.needs_calibration:
        if not allow_uncalibrated:
            typer.echo(f"Push refused: the {artifact.method} dictionary in {directory} has no calibration (the "
                       "per-concept max activation that scales steering factors), so nobody could steer with it. "
                       f"Run `axbench infer latent --dictionary {directory} --data DATA` first (it calibrates the "
                       "dictionary in place), or pass --allow-uncalibrated.", err=True)
            raise typer.Exit(1)
        typer.echo(f"Warning: pushing the uncalibrated {artifact.method} dictionary; its card says so and steering "
                   "with it needs `axbench infer latent` first.", err=True)
    entries = []
    if eval_results is None:
        eval_results = _run_results(directory, artifact.method)
    if eval_results is not None:
        import yaml

        try:
            entries = yaml.safe_load(eval_results.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            typer.echo(f"Push failed: cannot read {eval_results} ({error}); pass a file written by "
                       "`axbench eval report`.", err=True)
            raise typer.Exit(1) from None
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "dataset" in e and "value" in e
                                                    for e in entries):
            typer.echo(f"Push failed: {eval_results} is not a list of .eval_results entries (dataset, value).",
                       err=True)
            raise typer.Exit(1)
    url = artifact.push_to_hub(repo_id, revision=revision, private=private, datasets=dataset, eval_results=entries)
    typer.echo(f"Pushed {artifact.method} ({artifact.n_concepts} concepts) to {repo_id}: {url}")


def _run_results(directory: Path, method: str) -> Path | None:
    """The run's results of this dictionary when it lives in a run directory (<run>/dictionaries/<method>/):
    `<run>/eval/.eval_results/<method>.yaml`, written by the run's report."""
    resolved = directory.resolve()
    if resolved.parent.name != "dictionaries":
        return None
    path = resolved.parent.parent / "eval" / ".eval_results" / f"{method}.yaml"
    if path.is_file():
        typer.echo(f"With the run's results {path} (model-index and .eval_results/axbench.yaml).")
        return path
    return None


@dictionary_app.command("pull")
def pull(
    repo_id: str = typer.Argument(..., help="Hub model repo holding l<layer>/ folders."),
    directory: Path = typer.Argument(..., help="Where to write the dictionary."),
    layer: int | None = typer.Option(None, "--layer", help="Layer folder to download when the repo holds several."),
    revision: str | None = typer.Option(None, "--revision"),
) -> None:
    """Download a dictionary (or adapters / fine-tuned weights) from the Hub, check it, and save it locally."""
    from axmethods.dictionary import DictionaryError
    from axmethods.results import load_result

    try:
        artifact = load_result(repo_id, layer=layer, revision=revision)
    except DictionaryError as error:
        typer.echo(f"Pull failed: {error}", err=True)
        raise typer.Exit(1) from None
    folder = artifact.save_pretrained(directory)
    typer.echo(f"Saved {artifact.method} ({artifact.n_concepts} concepts) to {folder}")


@dictionary_app.command("convert-axbench")
def convert_axbench(
    source: Path = typer.Argument(..., help="AxBench folder with weight.pt [+ bias.pt] and metadata.jsonl (e.g. l20/)."),
    directory: Path = typer.Argument(..., help="Where to write the converted dictionary."),
    method: str = typer.Option(..., "--method", help="Method name, e.g. DiffMean or ReFT-r1."),
    base_model: str = typer.Option(..., "--base-model", help="Model the dictionary belongs to, e.g. google/gemma-2-2b-it."),
    layer: int | None = typer.Option(None, "--layer", help="Layer; default: from the folder name (l20 → 20)."),
    activation: str = typer.Option("identity", "--activation", help="Detection read-out: identity | relu (ReFT-r1)."),
    hidden_size: int | None = typer.Option(None, "--hidden-size", help="Needed only for a square weight matrix."),
    calibration: Path | None = typer.Option(None, "--calibration",
                                            help="AxBench max-activation table (examples/*.json) to calibrate with."),
) -> None:
    """Convert an AxBench dictionary (loaded without unpickling code) into safetensors + concepts + card."""
    from axmethods.convert import convert_axbench as convert
    from axmethods.dictionary import DictionaryError

    try:
        dictionary = convert(source, method=method, base_model=base_model, layer=layer, activation=activation,
                             hidden_size=hidden_size, calibration_file=calibration)
    except DictionaryError as error:
        typer.echo(f"Conversion failed: {error}", err=True)
        raise typer.Exit(1) from None
    folder = dictionary.save_pretrained(directory)
    typer.echo(f"Converted {dictionary.n_concepts} concepts × {dictionary.hidden_size} to {folder}")
