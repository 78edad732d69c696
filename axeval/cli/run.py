"""`axbench run CONFIG` and `axbench demo`: the whole benchmark, stage by stage, with a summary."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from axeval.cli.display import print_leaderboard, read_leaderboard
from axeval.rundir import RunDirectory

if TYPE_CHECKING:
    from axeval.pipeline import PipelineResult

DEMO_CONFIG = "demo.yaml"
DEMO_CONCEPTS = "demo_concepts.jsonl"
DEMO_EXAMPLES = "demo_examples.jsonl"  # written by us: the demo asks the LLM to generate only one concept

_SET_HELP = "Override a config value: section.key=value (YAML-typed), repeatable."


def register_run_commands(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)


def run(
    config: Path = typer.Argument(..., help="YAML config (sections: run, model, llm, …)."),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=_SET_HELP),
    force: bool = typer.Option(False, help="Re-run every stage even when its outputs are current."),
) -> None:
    """Run the benchmark described by CONFIG; stages whose outputs are current are skipped."""
    _run(config, set_ or [], force)


def demo(
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Where the run directory goes."),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=_SET_HELP),
    force: bool = typer.Option(False, help="Re-run every stage even when its outputs are current."),
) -> None:
    """The benchmark on the embedded defaults: embedded target model, embedded LLM, no keys, no network."""
    configs = importlib.resources.files("axeval") / "configs"
    with importlib.resources.as_file(configs / DEMO_CONFIG) as path, \
            importlib.resources.as_file(configs / DEMO_CONCEPTS) as concepts, \
            importlib.resources.as_file(configs / DEMO_EXAMPLES) as examples:
        overrides = [f"data.concept_path={concepts}", f"data.examples_path={examples}"]
        if output_dir is not None:
            overrides.append(f"run.output_dir={output_dir}")
        _run(path, overrides + list(set_ or []), force)


def _run(config_path: Path, overrides: list[str], force: bool) -> None:
    # Deferred: the CLI starts without torch; only the commands that need it load it.
    from axeval.cli.config import load_run_config
    from axeval.pipeline import RunLockedError, run_pipeline
    from axeval.stages import default_stages
    from axmethods.distributed import is_main

    console = Console(quiet=not is_main())  # under a distributed launcher, rank 0 alone prints the run's summary
    config = load_run_config(config_path, overrides)
    console.print(f"Run directory: [bold]{config.run_dir}[/bold] (config hash {config.hash()})")
    try:
        result = run_pipeline(config, default_stages(config), force=force)
    except RunLockedError as err:
        console.print(f"[red]Run directory busy:[/red] {err}", soft_wrap=True)
        raise typer.Exit(1) from None
    print_summary(result, console)


def print_summary(result: PipelineResult, console: Console) -> None:
    """Stages (status, time, what each made), the leaderboard with its caveats, the LLM's bill, the report path."""
    table = Table(title="axbench run summary", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("stage", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("seconds", justify="right", no_wrap=True)
    table.add_column("result", overflow="fold")
    for stage in result.stages:
        table.add_row(stage.name, stage.status, f"{stage.seconds:.1f}", stage.line)
    console.print(table)
    leaderboard = RunDirectory(result.run_dir).leaderboard_path
    if leaderboard.is_file():
        print_leaderboard(console, read_leaderboard(leaderboard))
    if result.llm_totals is not None:
        t = result.llm_totals
        console.print(f"LLM: {t.calls} calls, {t.cache_hits} cache hits, {t.prompt_tokens} prompt + "
                      f"{t.completion_tokens} completion tokens, ${t.cost_usd:.4f}")
    console.print(f"Done in {result.seconds:.1f} s.")
    report = result.run_dir / "eval" / "report.md"
    console.print(f"Report: [bold]{report}[/bold] (and report.html)" if report.exists()
                  else f"Results: [bold]{result.run_dir}[/bold]", soft_wrap=True)


