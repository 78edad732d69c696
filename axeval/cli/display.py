"""What the CLI prints: rich tables that stay readable in an 80-column terminal, never raw JSON or markdown."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

# Leaderboard columns: (title, field prefix in Report.by_method(), digits of the mean, of the interval). A cell
# shows the mean over concepts with its 95% interval on a second line, so four metrics and the method name fit
# in 80 columns; hard-negative accuracy and the sub-scores are in the report and in --json.
DETECTION_COLUMNS = (("AUROC", "detection_auroc_", 3, 2), ("F1 (imb.)", "imbalance_f1_", 3, 2))
JUDGE_COLUMNS = (("Steering", "steering_score_", 3, 2),)
JUDGE_FREE_COLUMNS = (("Lexical %", "steering_lexical_score_", 1, 0), ("PPL", "steering_perplexity_", 1, 0))
LEADERBOARD_COLUMNS = (*DETECTION_COLUMNS, *JUDGE_COLUMNS, *JUDGE_FREE_COLUMNS)


def leaderboard_columns(lead: str | None) -> tuple[tuple[str, str, int, int], ...]:
    """AxBench's order (the judge's steering score first); with a judge too small to trust (`lead` "judge-free",
    `axeval.report.Report.lead`) the judge-free scores come first and the judge's is marked secondary."""
    if lead != "judge-free":
        return LEADERBOARD_COLUMNS
    # Five metrics do not fit 80 columns: the imbalance F1 stays in the report and in --json.
    return (DETECTION_COLUMNS[0], *JUDGE_FREE_COLUMNS, *((f"{name}*", *rest) for name, *rest in JUDGE_COLUMNS))


def _cell(values: Mapping[str, Any], prefix: str, digits: int, ci_digits: int) -> str:
    mean = values.get(f"{prefix}mean")
    if mean is None:
        return "–"
    low, high = values.get(f"{prefix}ci_low"), values.get(f"{prefix}ci_high")
    interval = f"\n[dim][{low:.{ci_digits}f}, {high:.{ci_digits}f}][/dim]" if low is not None and high is not None \
        else ""
    return f"{mean:.{digits}f}{interval}"


def leaderboard_table(methods: Mapping[str, Mapping[str, Any]], title: str = "Leaderboard", lead: str | None = None
                      ) -> Table:
    """Methods (rows, in the given order) × the metrics any of them has, in `leaderboard_columns(lead)`'s order."""
    columns = [column for column in leaderboard_columns(lead)
               if any(values.get(f"{column[1]}mean") is not None for values in methods.values())]
    ratio = next((values["imbalance_negatives_per_positive"] for values in methods.values()
                  if values.get("imbalance_negatives_per_positive")), None)
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", padding=(0, 1))
    table.add_column("method", no_wrap=True)
    for name, _, _, _ in columns:
        table.add_column(f"F1 (1:{ratio:.0f})" if name == "F1 (imb.)" and ratio else name, justify="right",
                         no_wrap=True)
    for method, values in methods.items():
        table.add_row(method, *(_cell(values, prefix, digits, ci_digits) for _, prefix, digits, ci_digits in columns))
    return table


def read_leaderboard(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def print_leaderboard(console: Console, leaderboard: Mapping[str, Any]) -> None:
    """The leaderboard table, the judge line and the caveats (from `leaderboard.json`)."""
    methods = leaderboard.get("methods") or {}
    if not methods:
        console.print("No results to rank yet.")
        return
    console.print(leaderboard_table(methods, lead=leaderboard.get("lead")))
    for line in filter(None, [leaderboard.get("judge"), *leaderboard.get("caveats", [])]):
        console.print(f"[yellow]•[/yellow] {line}", highlight=False)


def frame_table(frame: pd.DataFrame, title: str, key: str = "method") -> Table:
    """A data frame as a table: floats to 3 digits, the key column unwrapped."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for column in frame.columns:
        table.add_column(str(column), justify="left" if column == key else "right", no_wrap=column == key)
    for row in frame.itertuples(index=False):
        table.add_row(*("–" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}" if isinstance(v, float) else str(v)
                        for v in row))
    return table
