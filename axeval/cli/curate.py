"""`axbench curate …`: judged generations to people in Argilla (`send`), their labels back (`fetch`), judge–human
agreement, and the labels to the Hub (`push`): `push` / `pull` always mean the Hub, `send` / `fetch` Argilla."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from axeval.cli.grammar import no_private_option, private_option, renamed_command, warn_renamed


class _CurateGroup(TyperGroup):
    """`curate push` is the Hub upload of a labels folder; until the next release, `curate push RUN --dataset NAME`
    (its old meaning, to Argilla) still runs `curate send`, with one line saying so."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] == "push" and any(arg == "--dataset" or arg.startswith("--dataset=") for arg in args[1:]):
            warn_renamed("curate push RUN --dataset NAME", "curate send RUN --dataset NAME")
            return "send", self.get_command(ctx, "send"), args[1:]
        return super().resolve_command(ctx, args)


curate_app = typer.Typer(cls=_CurateGroup, no_args_is_help=True,
                         help="Review judge labels with people in Argilla (send, fetch); measure judge–human "
                              "agreement; push the labels to the Hub.")

_URL_HELP = "Argilla server URL (default: $ARGILLA_API_URL)."
_WORKSPACE_HELP = "Argilla workspace (default: the server's default workspace)."


def _fail(error: Exception) -> None:
    typer.echo(str(error), err=True)
    raise typer.Exit(1) from None


def _client(api_url: str | None):
    from axeval.curation.argilla_io import connect

    # The key is only ever read from the environment: a command-line option would land in shell history.
    return connect(api_url)


def _sampled_records(run_dir: Path, sample: int | None, stratify: str, seed: int):
    from axeval.curation.records import build_records, load_judged_run, sample_judged

    by = tuple(part.strip() for part in stratify.split(",") if part.strip())
    return build_records(sample_judged(load_judged_run(run_dir), sample, by, seed))


@curate_app.command("send")
def send(
    run_dir: Path = typer.Argument(..., help="A run directory with eval/judgements.parquet."),
    dataset: str = typer.Option(..., "--dataset", help="Argilla dataset name (created if missing, updated if not)."),
    sample: int | None = typer.Option(None, "--sample", help="Records to send (default: every judged generation)."),
    stratify: str = typer.Option("method,factor,rating", help="Strata of the sample: a subset of "
                                 "method,factor,rating (factor: low/mid/high thirds; rating: judge score band)."),
    seed: int = typer.Option(0, help="Seed of the sample."),
    workspace: str | None = typer.Option(None, help=_WORKSPACE_HELP),
    min_submitted: int = typer.Option(1, "--min-submitted", help="Submitted responses each record needs."),
    api_url: str | None = typer.Option(None, "--api-url", help=_URL_HELP),
) -> None:
    """Send a stratified sample of judged generations to Argilla, the judge's ratings as suggestions."""
    from axeval.curation.argilla_io import push_records

    try:
        records = _sampled_records(run_dir, sample, stratify, seed)
        summary = push_records(_client(api_url), records, dataset, workspace=workspace, min_submitted=min_submitted)
    except (FileNotFoundError, ValueError, ConnectionError, ImportError) as error:
        _fail(error)
    typer.echo(f"{summary.workspace}/{summary.dataset}: {summary.new_records} new record(s), "
               f"{summary.updated_records} updated{' (dataset created)' if summary.created else ''}. "
               f"Annotate at {summary.url}")


@curate_app.command("fetch")
def fetch(
    dataset: str = typer.Argument(..., help="Argilla dataset name."),
    out: Path = typer.Option(..., "--out", help="Labels folder to write (e.g. runs/<name>/curation/<dataset>, "
                                                "where `axbench eval report` finds it)."),
    workspace: str | None = typer.Option(None, help=_WORKSPACE_HELP),
    api_url: str | None = typer.Option(None, "--api-url", help=_URL_HELP),
    push_to: str | None = typer.Option(None, "--push-to", help="Also push the folder to this Hub dataset repo "
                                       "(as `axbench curate push`)."),
    private: bool = private_option(),
) -> None:
    """Fetch the submitted responses from Argilla into a labels folder with a card (a row per record × annotator)."""
    from axeval.curation.argilla_io import pull_labels
    from axeval.curation.labels import push_labels, write_labels

    try:
        labels, info = pull_labels(_client(api_url), dataset, workspace=workspace)
    except (ValueError, ConnectionError, ImportError) as error:
        _fail(error)
    write_labels(labels, out, info)
    typer.echo(f"Fetched {len(labels)} response row(s) of {labels['record_id'].nunique()} record(s) into {out}.")
    if push_to:
        typer.echo(f"Pushed to {push_to}: {push_labels(out, push_to, private=private)}")


@curate_app.command("agreement")
def agreement(
    labels_dir: Path = typer.Argument(..., help="A folder written by `axbench curate fetch`."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
) -> None:
    """Judge–human agreement: κ (quadratic), Spearman ρ, exact agreement, confusion matrices, inter-annotator κ."""
    from axeval.curation.labels import write_agreement

    try:
        result, paths = write_agreement(labels_dir)
    except (FileNotFoundError, ValueError) as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    table = Table(title=f"Judge–human agreement: {result.n_records} records, {result.n_annotators} annotator(s), "
                        f"{result.n_comparisons} comparisons")
    frame = result.table()
    for column in frame.columns:
        table.add_column(column, justify="left" if column == "criterion" else "right")
    for row in frame.itertuples(index=False):
        table.add_row(*("n/a" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}" if isinstance(v, float)
                        else str(v) for v in row))
    Console().print(table)
    typer.echo(f"Wrote {paths['json']} and {paths['plot']}.")


@curate_app.command("export")
def export(
    run_dir: Path = typer.Argument(..., help="A run directory with eval/judgements.parquet."),
    out: Path = typer.Option(..., "--out", help="New folder for Argilla's Hub layout."),
    dataset: str = typer.Option(..., "--dataset", help="Name the dataset gets when imported."),
    sample: int | None = typer.Option(None, "--sample"),
    stratify: str = typer.Option("method,factor,rating"),
    seed: int = typer.Option(0),
    min_submitted: int = typer.Option(1, "--min-submitted"),
    push_to: str | None = typer.Option(None, "--push-to", help="Also push the folder to this Hub dataset repo."),
    private: bool = private_option(),
) -> None:
    """Write the review set in Argilla's Hub layout without a server (loads into any Argilla server)."""
    from huggingface_hub import HfApi

    from axeval.curation.hub_layout import export_review

    try:
        records = _sampled_records(run_dir, sample, stratify, seed)
        export_review(records, out, dataset, min_submitted=min_submitted, source=str(run_dir))
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        _fail(error)
    typer.echo(f"Exported {len(records)} record(s) to {out}.")
    if push_to:
        api = HfApi()
        api.create_repo(push_to, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=push_to, repo_type="dataset", folder_path=out,
                                   commit_message=f"Argilla review set {dataset} (axbench curate export)")
        typer.echo(f"Pushed to {push_to}: {commit.commit_url}")


@curate_app.command("import")
def import_(
    source: str = typer.Argument(..., help="A folder in Argilla's Hub layout, or a Hub dataset repo id."),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset name (default: the exported name)."),
    workspace: str | None = typer.Option(None, help=_WORKSPACE_HELP),
    api_url: str | None = typer.Option(None, "--api-url", help=_URL_HELP),
) -> None:
    """Send an exported review set (a folder or a Hub dataset repo) to an Argilla server, responses included."""
    from huggingface_hub import snapshot_download

    from axeval.curation.argilla_io import push_records
    from axeval.curation.hub_layout import read_review

    folder = Path(source)
    try:
        if not folder.is_dir():
            folder = Path(snapshot_download(source, repo_type="dataset",
                                            allow_patterns=[".argilla/*", "data/*.parquet", "README.md"]))
        settings, meta, records = read_review(folder)
        name = dataset or meta.get("name")
        min_submitted = int((settings.get("distribution") or {}).get("min_submitted", 1))
        summary = push_records(_client(api_url), records, name, workspace=workspace, min_submitted=min_submitted,
                               with_responses=True)
    except (FileNotFoundError, ValueError, ConnectionError, ImportError) as error:
        _fail(error)
    typer.echo(f"{summary.workspace}/{summary.dataset}: {summary.new_records} new record(s), "
               f"{summary.updated_records} updated. {summary.url}")


@curate_app.command("push")
def push(
    labels_dir: Path = typer.Argument(..., help="A folder written by `axbench curate fetch`."),
    repo_id: str = typer.Argument(..., help="Hub dataset repo (created if missing)."),
    private: bool = private_option(),
    _no_private: bool = no_private_option("curate push"),
) -> None:
    """Push a labels folder (parquet, card, agreement) to a Hub dataset repo."""
    from axeval.curation.labels import push_labels

    try:
        typer.echo(push_labels(labels_dir, repo_id, private=private))
    except FileNotFoundError as error:
        _fail(error)


# The old spellings, for one release (the old `curate push RUN --dataset NAME` is routed by _CurateGroup).
renamed_command(curate_app, "pull", fetch, old="curate pull", new="curate fetch")
renamed_command(curate_app, "publish", push, old="curate publish", new="curate push")
