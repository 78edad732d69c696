"""`axbench metrics push`: the two metric modules as Hub Spaces that `evaluate.load` reads without axbench."""

from __future__ import annotations

import typer

from axdata.errors import AxbenchError
from axeval.cli.grammar import no_private_option, private_option

metrics_app = typer.Typer(help="Push the metric modules (concept_detection, steering) to the Hub as Spaces.",
                          no_args_is_help=True)


@metrics_app.command("push")
def push(
    org: str = typer.Argument(..., help="User or organisation that will own the Spaces ORG/concept_detection and "
                              "ORG/steering."),
    private: bool = private_option(),
    _no_private: bool = no_private_option("metrics push"),
) -> None:
    """Push both metric modules as Hub Spaces, loadable with evaluate.load("ORG/steering") by anyone: each Space
    carries its own generated copy of the functions it needs (no axbench install)."""
    from axeval.metrics.hub import push_metrics

    try:
        pushed = push_metrics(org, private=private)
    except AxbenchError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    for metric in pushed:
        typer.echo(f"{metric.name}: {metric.repo_id} ({metric.commit_url})")
