"""`axbench data …`: import AxBench-format data and inspect dataset directories."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.table import Table

from axdata.builders import (
    CONCEPTS_FILE,
    concepts_path,
    list_configs,
    list_splits,
    read_checked_concepts,
    read_provenance,
    split_files,
)
from axdata.builders.axbench_import import import_axbench
from axdata.concepts import ConceptFileError
from axdata.errors import AxbenchError
from axdata.schema import CATEGORIES, GENRES
from axeval.cli.data_generate import generate
from axeval.cli.data_hub import pull, push

data_app = typer.Typer(help="Generate, import and inspect concept datasets; push them to the Hub and pull them back.",
                       no_args_is_help=True)


@data_app.command("import")
def import_(
    source_dir: Path = typer.Argument(..., help="One AxBench setting: a repository folder such as "
                                      "concept10/prod_2b_l20_v1, or a Hub folder such as 2b/l20."),
    out_dir: Path | None = typer.Argument(None, help="Dataset directory to write <config>/<split>-*.parquet into."),
    out: Path | None = typer.Option(None, "--out", help="Same as OUT_DIR."),
    config: str | None = typer.Option(None, "--dataset-config", help="Dataset config name for this setting, e.g. gemma-2-2b-it-l20; "
                                      "default: the source folder's name (e.g. prod_2b_l20_v1 or 2b-l20)."),
    steering_examples: int = typer.Option(10, "--steering-examples", min=0,
                                          help="Steering instructions per concept for the steering split built on "
                                          "import (AxBench: 10 = 5 selection + 5 held out); 0 = no steering split."),
    steering_instructions: str = typer.Option("shipped", "--steering-instructions",
                                              help="Their pool: 'shipped', a local .jsonl/.csv/.parquet, or the "
                                              "paper's tatsu-lab/alpaca_eval (needs the Hub)."),
) -> None:
    """Import AxBench-format data losslessly into our dataset layout and print what was imported."""
    if (out_dir is None and out is None) or (out_dir is not None and out is not None and out_dir != out):
        typer.echo("Give the output directory once: as OUT_DIR or as --out.", err=True)
        raise typer.Exit(2)
    out = out_dir if out_dir is not None else out
    if config is None:
        config = _default_config_name(source_dir)
    try:
        report = import_axbench(source_dir, out, config, steering_num_of_examples=steering_examples or None,
                                steering_instructions=steering_instructions)
    except AxbenchError as error:  # AxBenchImportError, ConceptFileError, SchemaError and bad config names
        typer.echo(f"Import failed: {error}", err=True)
        raise typer.Exit(1) from None
    console = Console()
    console.print(f"Imported {report.source_dir} ({report.layout} layout) as config [bold]{report.config}[/bold]")
    table = Table(title=f"{report.out_dir / report.config}")
    for column in ("split", "rows", *CATEGORIES):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, rows in report.rows.items():
        counts = report.categories[split]
        table.add_row(split, str(rows), *(str(counts.get(c, 0)) for c in CATEGORIES))
    console.print(table)
    genres = ", ".join(f"{genre} {n}" for genre, n in report.genres.items())
    console.print(f"concepts: {report.concepts} ({genres}); shared negatives: {report.shared_negatives}")


def _default_config_name(source_dir: Path) -> str:
    """prod_2b_l20_v1 → prod_2b_l20_v1; a Hub-layout folder 2b/l20 → 2b-l20."""
    resolved = source_dir.resolve()
    if resolved.name.startswith("l") and resolved.name[1:].isdigit():
        return f"{resolved.parent.name}-{resolved.name}"
    return resolved.name


@data_app.command("info")
def info(directory: Path = typer.Argument(..., help="A dataset directory written by `axbench data import` "
                                          "or a run's data/ folder.")) -> None:
    """Configs, splits, rows per split and category, and concepts of a dataset directory; exits 1 when a concept
    list cannot be read or misses concepts of its splits (after printing everything else)."""
    configs = list_configs(directory)
    if not configs:
        typer.echo(f"{directory} holds no dataset configs (no <config>/<split>-*.parquet files); import or "
                   "generate a dataset first.", err=True)
        raise typer.Exit(1)
    console = Console()
    problems: list[str] = []  # reported after the tables, on stderr, and the command fails
    for config in configs:
        table = Table(title=f"config {config}")
        for column in ("split", "rows", *CATEGORIES, "shards"):
            table.add_column(column, justify="left" if column == "split" else "right")
        for split in list_splits(directory, config):
            shards = split_files(directory, config, split)
            categories = Counter()
            rows = 0
            for shard in shards:
                parquet = pq.ParquetFile(shard)
                rows += parquet.metadata.num_rows
                if "category" in parquet.schema_arrow.names:
                    categories.update(parquet.read(columns=["category"]).column("category").to_pylist())
            table.add_row(split, str(rows), *(str(categories[c]) if categories else "-" for c in CATEGORIES),
                          str(len(shards)))
        console.print(table)
        if not concepts_path(directory, config).is_file():
            console.print(f"concepts: none (no {CONCEPTS_FILE})")
            continue
        try:
            concepts = read_checked_concepts(directory, config)
        except ConceptFileError as error:
            console.print("concepts: unusable (below)")
            problems.append(str(error))
            continue
        genres = Counter(concept.genre for concept in concepts)
        by_genre = ", ".join(f"{genre} {genres[genre]}" for genre in GENRES if genres[genre])
        console.print(f"concepts: {len(concepts)}" + (f" ({by_genre})" if by_genre else ""))
    provenance = read_provenance(directory)
    if provenance:
        console.print("provenance:")
        console.print_json(data=provenance)
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        raise typer.Exit(1)


data_app.command("generate")(generate)
data_app.command("push")(push)
data_app.command("pull")(pull)
