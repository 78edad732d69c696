"""`axbench dictionary push|pull|convert-axbench|output-score|from-hypernet`: move results (steering dictionaries and
every other result kind) between disk, the Hub and AxBench, and score a dictionary's rows."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from axeval.cli.grammar import private_option

dictionary_app = typer.Typer(help="Push, pull and convert steering dictionaries (and any other result of `axbench "
                                  "train`).", no_args_is_help=True)


@dictionary_app.command("push")
def push(
    directory: Path = typer.Argument(..., help="Dictionary directory (holding l<layer>/ folders), or an adapters / "
                                     "fine-tuned folder of a trained method."),
    repo_id: str = typer.Argument(..., help="Hub model repo, e.g. me/gemma-2-2b-it-l20-diffmean."),
    layer: int | None = typer.Option(None, "--layer", help="Layer folder to push when the directory holds several."),
    private: bool = private_option(),
    revision: str | None = typer.Option(None, "--revision", help="Branch to push to."),
    dataset: list[str] = typer.Option([], "--dataset", help="Training dataset id for the card (repeatable)."),
    eval_results: Path | None = typer.Option(None, "--eval-results",
                                             help="The dictionary's results: a run directory (its file of this "
                                             "method) or the file RUN_DIR/eval/.eval_results/<method>.yaml (axbench "
                                             "eval report), read as `axbench eval push` reads them: into the card's "
                                             "model-index and the repo's .eval_results/axbench.yaml. Default: the "
                                             "run's own, for a dictionary inside a run directory."),
    allow_uncalibrated: bool = typer.Option(False, "--allow-uncalibrated",
                                            help="Push a steering dictionary that has no calibration yet (nobody "
                                            "can steer with it before running latent inference)."),
) -> None:
    """Push a dictionary layer folder (or any other result: adapters, fine-tuned weights, BoW, …) and its card to a
    Hub model repo, with its results when it has them."""
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
                       f"Run `axbench infer latent --result {directory} --data DATA` first (it calibrates the "
                       "dictionary in place), or pass --allow-uncalibrated.", err=True)
            raise typer.Exit(1)
        typer.echo(f"Warning: pushing the uncalibrated {artifact.method} dictionary; its card says so and steering "
                   "with it needs `axbench infer latent` first.", err=True)
    entries = []
    if eval_results is None:
        eval_results = _run_results(directory, artifact.method)
    if eval_results is not None:
        from axdata.errors import InputError
        from axeval.publish import read_eval_results

        try:  # the one reader of `axbench eval push` too
            _, entries = read_eval_results(eval_results, artifact.method)
        except (InputError, FileNotFoundError) as error:
            typer.echo(f"Push failed: {error}", err=True)
            raise typer.Exit(1) from None
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
    """Pull a dictionary (or any other result) from the Hub, check it, and save it locally."""
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


@dictionary_app.command("output-score")
def output_score(
    directory: Path = typer.Argument(..., help="A calibrated rank-1 dictionary directory (after `axbench infer latent`)."),
    model: str | None = typer.Option(None, "--model", help="Target model; default: the dictionary's base model."),
    layer: int | None = typer.Option(None, "--layer", help="Layer folder to read when the directory holds several."),
    amplification: float = typer.Option(10.0, "--amplification", help="Each row is added at amplification × its "
                                        "calibration (paper: 10)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Rows scored per forward pass."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16."),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Output score (Arad et al. 2025) of every row: written into the dictionary (in place) and printed."""
    from axmethods.dictionary import DictionaryError, SteeringDictionary
    from axmethods.models import TargetModelConfig, load_target_model
    from axmethods.output_score import THRESHOLD, OutputScoreSettings, dictionary_output_scores

    try:
        dictionary = SteeringDictionary.load(directory, layer=layer)
        if dictionary.calibration is None:  # refused before a model loads: the fix is another command
            raise DictionaryError(f"The {dictionary.method} dictionary in {directory} has no calibration, which sets "
                                  "how far each row is amplified; run `axbench infer latent --result "
                                  f"{directory} --data DATA` first (it calibrates the dictionary in place).")
        spec = TargetModelConfig(model=model) if model else \
            TargetModelConfig(model=dictionary.base_model, revision=dictionary.base_model_revision)
        target = load_target_model(spec, dtype=dtype, device=device)
        settings = OutputScoreSettings(amplification=amplification, batch_size=batch_size)
        scored = dictionary_output_scores(target, dictionary, settings, progress=True)
    except DictionaryError as error:
        typer.echo(f"Output score failed: {error}", err=True)
        raise typer.Exit(2) from None
    from axmethods.dictionary import WEIGHTS_FILE

    scored.save_pretrained(directory.parent if (directory / WEIGHTS_FILE).is_file() else directory)
    for concept, score in zip(scored.concepts, scored.output_score.tolist()):
        typer.echo(f"{concept.concept_id}\t{score:.4f}\t{concept.concept}")
    kept = int((scored.output_score >= THRESHOLD).sum())
    typer.echo(f"{scored.method}: output score ≥ {THRESHOLD} for {kept} of {scored.n_concepts} rows; saved in {directory}")


@dictionary_app.command("from-hypernet")
def from_hypernet(
    hypernet_dir: Path = typer.Argument(..., help="A HyperSteer hypernetwork folder (`axbench train hypersteer`) or "
                                        "Hub repo."),
    concepts: Path = typer.Option(..., "--concepts", help="Concepts to write rows for, in any concept format "
                                  "(.txt one per line, .csv, .jsonl incl. AxBench's metadata.jsonl, Neuronpedia "
                                  ".json); concepts the network never saw work too."),
    out: Path = typer.Option(..., "--out", help="Where to write the rank-1 steering dictionary."),
    model: str | None = typer.Option(None, "--model", help="Target model; default: the network's base model."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16."),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Turn a concept list into a steering dictionary with a HyperSteer hypernetwork (Δ averaged over its
    reference prompts; HyperSteer's factor grid, calibration 1)."""
    from axdata.concepts import ConceptFileError, load_concepts
    from axmethods.dictionary import DictionaryError
    from axmethods.methods.hypersteer import HyperSteerResult
    from axmethods.models import TargetModelConfig, load_target_model
    from axmethods.results import load_result

    def refuse(problem: str) -> NoReturn:
        typer.echo(f"from-hypernet: {problem}", err=True)
        raise typer.Exit(2)

    if not hypernet_dir.exists() and (hypernet_dir.is_absolute() or str(hypernet_dir).startswith(".")):
        refuse(f"{hypernet_dir}: no such folder. Fix: pass the --out folder of `axbench train hypersteer`.")
    try:
        hypernet = load_result(hypernet_dir)
    except (DictionaryError, FileNotFoundError, OSError, ValueError) as error:
        refuse(f"{hypernet_dir} is not a hypernetwork folder ({error}). Fix: pass the --out folder of "
               "`axbench train hypersteer`.")
    if not isinstance(hypernet, HyperSteerResult):
        refuse(f"{hypernet_dir} holds a {hypernet.method} {hypernet.KIND}, not a HyperSteer hypernetwork. Fix: pass "
               "the --out folder of `axbench train hypersteer`.")
    try:
        wanted = load_concepts(concepts, dedupe=False)
    except (ConceptFileError, OSError) as error:
        refuse(f"{error}" if isinstance(error, ConceptFileError) else f"cannot read {concepts} ({error}).")
    spec = TargetModelConfig(model=model) if model else \
        TargetModelConfig(model=hypernet.base_model, revision=hypernet.base_model_revision)
    target = load_target_model(spec, dtype=dtype, device=device)
    try:
        dictionary = hypernet.to_dictionary(wanted, target)
    except DictionaryError as error:
        refuse(str(error))
    folder = dictionary.save_pretrained(out)
    unseen = len({c.concept_id for c in wanted} - set(hypernet.concept_ids))
    typer.echo(f"Wrote {dictionary.n_concepts} concepts × {dictionary.hidden_size} ({unseen} not trained on) to "
               f"{folder}; steer with `axbench infer steer --result {out}`")
