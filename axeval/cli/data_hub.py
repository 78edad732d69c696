"""`axbench data push|pull`: push a dataset directory to the Hub as a versioned dataset repo, and pull one back.

Registered on the `data` group by the CLI: `data_app.command("push")(push)`, `data_app.command("pull")(pull)`.
The token comes from the usual huggingface_hub login or HF_TOKEN, never from a flag, so it stays out of
shell history and logs.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import typer
from huggingface_hub.errors import HfHubHTTPError
from rich.console import Console
from rich.table import Table

from axdata.builders.hub import DEFAULT_MAX_SHARD_SIZE, DEFAULT_VERSION, pull_dataset, push_dataset
from axdata.errors import AxbenchError
from axeval.cli.grammar import private_option
from axeval.rundir import enclosing_run_directories

# What the library raises for bad inputs (messages name the input and the fix) and what the Hub answers.
_EXPECTED_ERRORS = (ValueError, FileNotFoundError, FileExistsError, HfHubHTTPError)


def push(
    dataset_dir: Path = typer.Argument(..., help="Dataset directory (<config>/<split>-*.parquet), e.g. from "
                                       "`axbench data import` or a run's data/ folder."),
    repo_id: str = typer.Argument(..., help="Hub dataset repo, e.g. my-org/axbench-concept10."),
    revision: str | None = typer.Option(None, "--revision", help="Branch to commit to (created if missing); "
                                        "default main."),
    version: str = typer.Option(DEFAULT_VERSION, "--version", help="Dataset version MAJOR.MINOR.PATCH; the commit "
                                "is tagged v<version> and the card records it."),
    private: bool = private_option(),
    max_shard_size: str = typer.Option(DEFAULT_MAX_SHARD_SIZE, "--max-shard-size",
                                       help="Largest parquet shard (Arrow size), e.g. 500MB."),
    message: str | None = typer.Option(None, "--message", "-m", help="Commit message."),
) -> None:
    """Push every config of DATASET_DIR with its card to REPO_ID (a Hub dataset repo) and tag the version."""
    try:
        report = push_dataset(dataset_dir, repo_id, revision=revision, version=version, private=private,
                              max_shard_size=max_shard_size, commit_message=message)
    except _EXPECTED_ERRORS as error:
        typer.echo(f"Push of {dataset_dir} to {repo_id} failed: {error}", err=True)
        raise typer.Exit(1) from None
    console = Console()
    state = "committed" if report.created_commit else "unchanged (no new commit)"
    console.print(f"{report.repo_id}@{report.revision}: {state}, commit {report.commit_oid}")
    if report.tag:
        console.print(f"tag {report.tag}: {'created' if report.created_tag else 'already there with this content'}")
    table = Table(title="pushed")
    for column in ("config", "split", "rows", "shards"):
        table.add_column(column, justify="left" if column in ("config", "split") else "right")
    for config in report.configs:
        for split in config.splits:
            table.add_row(config.name, split.name, str(split.rows), str(split.shards))
    console.print(table)
    console.print(f"{len(report.files)} files: " + ", ".join(report.files))
    console.print(f"commit: {report.commit_url}")
    console.print(f"url: {report.url}")


def pull(
    repo_id: str = typer.Argument(..., help="Hub dataset repo pushed with `axbench data push`."),
    out_arg: Path | None = typer.Argument(None, metavar="[OUT]", help="New dataset directory (or use --out)."),
    out: Path | None = typer.Option(None, "--out", help="New dataset directory to write the local layout into."),
    revision: str | None = typer.Option(None, "--revision", help="Tag (e.g. v1.0.0), branch or commit; default main."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset directory (once the "
                                   "pulled copy is complete and checked); without it, a non-empty one is refused."),
) -> None:
    """Pull REPO_ID from the Hub into a new local dataset directory that every axbench stage reads; its files are
    checked (shards against the schema, concept lists whole and covering every concept of the splits)."""
    if out is not None and out_arg is not None and out != out_arg:
        typer.echo(f"Two output directories given ({out_arg} and --out {out}); pass one.", err=True)
        raise typer.Exit(2)
    target = out or out_arg
    if target is None:
        typer.echo("No output directory; pass OUT or --out DIR (a new directory).", err=True)
        raise typer.Exit(2)
    try:
        with ExitStack() as held:
            runs = enclosing_run_directories([target])
            if runs:  # a run's data/ folder: written under the run's lock (imported only then: it loads torch)
                from axeval.pipeline import locked_run_directories

                held.enter_context(locked_run_directories(runs, "axbench data pull"))
            report = pull_dataset(repo_id, target, revision=revision, overwrite=overwrite)
    except (*_EXPECTED_ERRORS, AxbenchError) as error:
        typer.echo(f"Pull of {repo_id} into {target} failed: {error}", err=True)
        raise typer.Exit(1) from None
    console = Console()
    console.print(f"Pulled {report.repo_id}@{report.revision or 'main'} (commit {report.commit_oid}, version "
                  f"{report.version or 'unknown'}) into {report.out_dir}")
    table = Table(title=str(report.out_dir))
    for column in ("config", "split", "rows"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for config, splits in report.configs.items():
        for split, rows in splits.items():
            table.add_row(config, split, str(rows))
    console.print(table)
    console.print(f"{len(report.files)} files written")
