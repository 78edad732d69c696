"""`axbench leaderboard push|show`: the leaderboard of one or more runs as a Hub dataset, and back as a table / page."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from axeval.cli.grammar import no_private_option, private_option

leaderboard_app = typer.Typer(help="Push the leaderboard of runs to the Hub as a dataset; show a pushed one.",
                              no_args_is_help=True)


def _fail(error: Exception) -> None:
    typer.echo(str(error), err=True)
    raise typer.Exit(1) from None


@leaderboard_app.command("push")
def push(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (one per model/layer setting), then the dataset "
                                          "repo to push the leaderboard to."),
    repo_id: str = typer.Argument(..., help="Dataset repo for the leaderboard, e.g. my-org/axbench-leaderboard."),
    dataset_id: str | None = typer.Option(None, help="Benchmark dataset repo, for runs whose data was not pulled."),
    private: bool = private_option(),
    _no_private: bool = no_private_option("leaderboard push"),
) -> None:
    """Push the leaderboard (one row per method × run) as a dataset that load_dataset reads."""
    from axeval.publish import publish_leaderboard

    try:
        published = publish_leaderboard(run_dirs, repo_id, dataset_id=dataset_id, private=private)
    except (LookupError, FileNotFoundError, ValueError) as error:
        _fail(error)
    typer.echo(f"Pushed the leaderboard of {len(run_dirs)} run(s) to {published.repo_id}: {published.url}")


@leaderboard_app.command("show")
def show(
    source: str = typer.Argument(..., help="A leaderboard dataset repo (`axbench leaderboard push`) or its parquet "
                                 "file."),
    html: Path | None = typer.Option(None, "--html", help="Also write the report's HTML page of it here."),
) -> None:
    """Show a pushed leaderboard; with --html, rebuild the report page from it."""
    from axdata.io import atomic_write_text
    from axeval.cli.display import frame_table
    from axeval.publish import leaderboard_html, load_leaderboard

    try:
        frame = load_leaderboard(source)
    except (OSError, ValueError) as error:
        _fail(error)
    shown = frame[[c for c in ("method", "model", "layer", "auroc", "steering_score", "suppression_score",
                               "n_concepts") if c in frame]]  # a board pushed before suppression has no column
    Console().print(frame_table(shown, f"Leaderboard: {source}"))
    if html is not None:
        atomic_write_text(html, leaderboard_html(frame, title=f"AxBench leaderboard: {source}"))
        typer.echo(f"Wrote {html}")
