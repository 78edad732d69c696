"""`axbench dictionary push|pull|convert-axbench|output-score|from-hypernet`: move results (steering dictionaries and
every other result kind) between disk, the Hub and AxBench, and score a dictionary's rows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from axeval.cli.grammar import private_option

if TYPE_CHECKING:
    from axmethods.dictionary import SteeringDictionary
    from axmethods.output_score import OutputScoreSettings

_OVERWRITE_HELP = ("Replace an existing result folder (once the new result is completely written); without it, a "
                   "non-empty one is refused.")

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
                                             "model-index and the repo's .eval_results/axbench-<config>.yaml. Default: the "
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
        typer.echo(f"With the run's results {path} (model-index and .eval_results/).")
        return path
    return None


@dictionary_app.command("pull")
def pull(
    repo_id: str = typer.Argument(..., help="Hub model repo holding l<layer>/ folders."),
    directory: Path = typer.Argument(..., help="Where to write the dictionary (a new folder; see --overwrite)."),
    layer: int | None = typer.Option(None, "--layer", help="Layer folder to download when the repo holds several."),
    revision: str | None = typer.Option(None, "--revision"),
    overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE_HELP),
) -> None:
    """Pull a dictionary (or any other result) from the Hub, check it (types of its config, finite weights, a known
    method), and save it locally."""
    from axdata.errors import AxbenchError
    from axmethods.results import load_result

    try:  # the output folder and the run lock are checked before anything is downloaded
        with writing_result(directory, overwrite=overwrite, command="axbench dictionary pull") as staging:
            artifact = load_result(repo_id, layer=layer, revision=revision)
            folder = directory / artifact.save_pretrained(staging).relative_to(staging)
    except AxbenchError as error:
        typer.echo(f"Pull failed: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Saved {artifact.method} ({artifact.n_concepts} concepts) to {folder}")


@contextmanager
def writing_result(directory: Path, *, overwrite: bool, command: str) -> Iterator[Path]:
    """For a command that writes a result as the new folder `directory`: refuses at once (an `AxbenchError`) when
    that exists and holds something, unless `overwrite`, or when the run directory it lies in is locked. Holds that
    lock and yields an empty staging folder beside `directory` to save the result into, which replaces `directory`
    whole when the block succeeds (`axdata.io.replaced_directory`: a failed write leaves the old result as it was)."""
    from axdata.io import check_new_directory, replaced_directory
    from axeval.pipeline import locked_run_directories
    from axeval.rundir import enclosing_run_directories

    check_new_directory(directory, overwrite=overwrite)
    with locked_run_directories(enclosing_run_directories([directory]), command), \
            replaced_directory(directory, overwrite=overwrite) as staging:
        yield staging


@dictionary_app.command("convert-axbench")
def convert_axbench(
    source: Path = typer.Argument(..., help="AxBench folder with weight.pt [+ bias.pt] and metadata.jsonl (e.g. l20/), "
                                  "or the train/ folder of an AxBench dump (concepts read from its generate/)."),
    directory: Path = typer.Argument(..., help="Where to write the converted dictionary."),
    method: str = typer.Option(..., "--method", help="Method name, e.g. DiffMean or ReFT-r1."),
    base_model: str = typer.Option(..., "--base-model", help="Model the dictionary belongs to, e.g. google/gemma-2-2b-it."),
    layer: int | None = typer.Option(None, "--layer", min=0, help="Layer; default: the layer in the folder's "
                                     "config.json (AxBench's train writes it), else the folder name (l20 → 20)."),
    activation: str = typer.Option("identity", "--activation", help="Detection read-out: identity | relu (ReFT-r1)."),
    hidden_size: int | None = typer.Option(None, "--hidden-size", help="Needed only for a square weight matrix."),
    calibration: Path | None = typer.Option(None, "--calibration",
                                            help="AxBench max-activation table (examples/*.json) to calibrate with."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dictionary already written there at this "
                                   "layer."),
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
    from axdata.errors import AxbenchError
    from axdata.io import check_new_directory
    from axeval.pipeline import locked_run_directories
    from axeval.rundir import enclosing_run_directories

    try:  # never over an existing layer folder without --overwrite; a run directory it writes into is locked
        check_new_directory(directory / f"l{dictionary.layer}", overwrite=overwrite)
        with locked_run_directories(enclosing_run_directories([directory]), "axbench dictionary convert-axbench"):
            folder = dictionary.save_pretrained(directory)
    except AxbenchError as error:
        typer.echo(f"Conversion failed: {error}", err=True)
        raise typer.Exit(1) from None
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
    from axdata.settings import check_flags
    from axeval.pipeline import RunLockedError, locked_run_directories
    from axeval.rundir import enclosing_run_directories
    from axmethods.dictionary import WEIGHTS_FILE, DictionaryError
    from axmethods.output_score import THRESHOLD, OutputScoreSettings

    check_flags("dictionary output-score", {"--batch-size": ("batch_size", batch_size),
                                            "--amplification": ("amplification", amplification)})
    settings = OutputScoreSettings(amplification=amplification, batch_size=batch_size)
    try:  # it rewrites the dictionary: under the lock of the run directory it lies in, as `axbench run` writes
        with locked_run_directories(enclosing_run_directories([directory]), "axbench dictionary output-score"):
            scored = _output_scored(directory, layer, model, settings, dtype=dtype, device=device)
            scored.save_pretrained(directory.parent if (directory / WEIGHTS_FILE).is_file() else directory)
    except RunLockedError as error:
        typer.echo(f"Output score failed: {error}", err=True)
        raise typer.Exit(1) from None
    except DictionaryError as error:
        typer.echo(f"Output score failed: {error}", err=True)
        raise typer.Exit(2) from None
    for concept, score in zip(scored.concepts, scored.output_score.tolist()):
        typer.echo(f"{concept.concept_id}\t{score:.4f}\t{concept.concept}")
    kept = int((scored.output_score >= THRESHOLD).sum())
    typer.echo(f"{scored.method}: output score ≥ {THRESHOLD} for {kept} of {scored.n_concepts} rows; saved in {directory}")


def _output_scored(directory: Path, layer: int | None, model: str | None, settings: OutputScoreSettings, *,
                   dtype: str, device: str) -> SteeringDictionary:
    """The dictionary in `directory` (checked as every result is, `load_result`) with each row's output score."""
    from axmethods.dictionary import DictionaryError, SteeringDictionary
    from axmethods.models import TargetModelConfig, load_target_model
    from axmethods.output_score import dictionary_output_scores
    from axmethods.results import load_result

    if not directory.is_dir():  # a local folder only: the scores are written back into it
        raise DictionaryError(f"{directory}: no such dictionary directory; check the path (pull a Hub dictionary "
                              "first with `axbench dictionary pull`).")
    dictionary = load_result(directory, layer=layer)
    if not isinstance(dictionary, SteeringDictionary):
        raise DictionaryError(f"{directory} holds a {dictionary.method} {dictionary.KIND}, not a steering "
                              "dictionary; output scores are measured for dictionary rows.")
    if dictionary.calibration is None:  # refused before a model loads: the fix is another command
        raise DictionaryError(f"The {dictionary.method} dictionary in {directory} has no calibration, which sets "
                              "how far each row is amplified; run `axbench infer latent --result "
                              f"{directory} --data DATA` first (it calibrates the dictionary in place).")
    spec = TargetModelConfig(model=model) if model else \
        TargetModelConfig(model=dictionary.base_model, revision=dictionary.base_model_revision)
    target = load_target_model(spec, dtype=dtype, device=device)
    return dictionary_output_scores(target, dictionary, settings, progress=True)


@dictionary_app.command("from-hypernet")
def from_hypernet(
    hypernet_dir: Path = typer.Argument(..., help="A HyperSteer hypernetwork folder (`axbench train hypersteer`) or "
                                        "Hub repo."),
    concepts: Path = typer.Option(..., "--concepts", help="Concepts to write rows for, in any concept format "
                                  "(.txt one per line, .csv, .jsonl incl. AxBench's metadata.jsonl, Neuronpedia "
                                  ".json); concepts the network never saw work too."),
    out: Path = typer.Option(..., "--out", help="Where to write the rank-1 steering dictionary (a new folder)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE_HELP),
    model: str | None = typer.Option(None, "--model", help="Target model; default: the network's base model."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16."),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Turn a concept list into a steering dictionary with a HyperSteer hypernetwork (Δ averaged over its
    reference prompts; HyperSteer's factor grid, calibration 1)."""
    from axdata.errors import AxbenchError

    try:  # before anything loads: an existing dictionary is never replaced without --overwrite
        with writing_result(out, overwrite=overwrite, command="axbench dictionary from-hypernet") as staging:
            summary = _from_hypernet(hypernet_dir, concepts, out, staging, model=model, dtype=dtype, device=device)
    except AxbenchError as error:  # refused output folder or locked run directory; the rest exits in the helper
        typer.echo(f"from-hypernet: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(summary)  # once the dictionary is in place


def _from_hypernet(hypernet_dir: Path, concepts: Path, out: Path, staging: Path, *, model: str | None, dtype: str,
                   device: str) -> str:
    """The dictionary of `concepts` from the hypernetwork, saved into `staging` (which becomes `out`); returns the
    line that says so."""
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
    folder = out / dictionary.save_pretrained(staging).relative_to(staging)
    unseen = len({c.concept_id for c in wanted} - set(hypernet.concept_ids))
    return (f"Wrote {dictionary.n_concepts} concepts × {dictionary.hidden_size} ({unseen} not trained on) to "
            f"{folder}; steer with `axbench infer steer --result {out}`")
