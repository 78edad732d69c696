"""`axbench data generate`: a concept dataset from a run config (its `data` section) or flags."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from axdata.errors import AxbenchError


def generate(
    config: Path | None = typer.Argument(None, help="Run config YAML (sections run, model, llm, data); "
                                            "omitted = the defaults (embedded LLM and target model)."),
    concepts: Path | None = typer.Option(None, "--concepts", help="Concept list; overrides data.concept_path."),
    examples: Path | None = typer.Option(None, "--examples", help="Examples written by people (.jsonl); "
                                         "overrides data.examples_path. Concepts they cover skip LLM generation."),
    out: Path | None = typer.Option(None, "--out", help="Dataset directory; default <run dir>/data. With --out, "
                                                        "the working files (resume units, LLM cache and ledger, "
                                                        "report) go to <out>.generation/, not the run directory."),
    config_name: str | None = typer.Option(None, "--dataset-config",
                                              help="Dataset config name; default data.dataset_config or "
                                              "<model>-l<layer>."),
    max_concepts: int | None = typer.Option(None, "--max-concepts", help="Overrides data.max_concepts."),
    set_: list[str] | None = typer.Option(None, "--set", "-s",
                                             help="Override a config value: section.key=value, repeatable."),
) -> None:
    """Generate train / latent / latent_imbalance / steering / preference splits for a concept list.

    Resumable: run the same command again after an interruption and it continues where it stopped.
    The report (failures, calls, tokens, cost) is written to <run dir>/generation_report.json
    (<out>.generation/generation_report.json with --out).
    """
    # Deferred: the CLI starts without torch; only the commands that need it load it.
    from axeval.cli.config import load_run_config
    from axeval.pipeline import RunContext, RunLockedError, locked_run_directory
    from axeval.rundir import RunDirectory
    from axeval.stages.data import DataStage, generate_for_run

    console = Console()
    run_config = load_run_config(config, set_ or [])
    changes = {key: value for key, value in (("concept_path", str(concepts) if concepts else None),
                                              ("examples_path", str(examples) if examples else None),
                                              ("max_concepts", max_concepts), ("dataset_config", config_name))
               if value is not None}
    try:
        data_config = dataclasses.replace(run_config.data, **changes)
    except AxbenchError as err:
        console.print(f"[red]Config error:[/red] {err}", soft_wrap=True)
        raise typer.Exit(2) from None
    # `--out` elsewhere must not write into the config's run directory (another run may own it).
    run_dir = RunDirectory(out.with_name(out.name + ".generation") if out is not None else run_config.run_dir)
    ctx = RunContext(run_config, run_dir)
    stage = DataStage(data_config)
    try:
        with locked_run_directory(run_dir.root):
            result = generate_for_run(ctx, data_config, stage.dataset_config(ctx), out or run_dir.data_dir)
    except RunLockedError as err:
        console.print(f"[red]Busy:[/red] {err}", soft_wrap=True)
        raise typer.Exit(1) from None
    except (AxbenchError, OSError) as err:
        console.print(f"[red]Generation failed:[/red] {err}", soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        ctx.close()
    table = Table(title=f"{result.out_dir / result.dataset_config}")
    table.add_column("split")
    table.add_column("rows", justify="right")
    for split, rows in result.rows.items():
        table.add_row(split, str(rows))
    console.print(table)
    report = result.report
    projection = report["cost_projection"]["training_usd_per_concept"]
    console.print(f"{len(report['failures'])} failures listed in {result.report_path}; LLM calls: "
                  f"{report['ledger']['total']['calls']}; training cost per concept at gpt-4o-mini prices: "
                  + (f"${projection:.5f}" if projection is not None else "n/a"))
