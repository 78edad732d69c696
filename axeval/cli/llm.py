"""`axbench llm …`: the embedded OpenAI-compatible server and the LLM ledger."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from axdata.embedded import DEFAULT_EMBEDDED_MODEL
from axdata.llm import Ledger

llm_app = typer.Typer(help="Serve the embedded LLM; inspect LLM calls, tokens and cost.", no_args_is_help=True)


@llm_app.command("serve")
def serve(
    model: str = typer.Option(DEFAULT_EMBEDDED_MODEL, help="Embedded model to serve."),
    port: int | None = typer.Option(None, help="Port on 127.0.0.1 (default: a free one)."),
    n_parallel: int = typer.Option(4, help="Requests decoded in parallel."),
    n_ctx: int = typer.Option(8192, help="Context size shared by the parallel slots."),
    threads: int | None = typer.Option(None, help="CPU threads (default: all cores)."),
) -> None:
    """Start the embedded OpenAI-compatible server on 127.0.0.1, print its base_url, stop on Ctrl-C."""
    from axdata.llm.server import serve_forever
    from axdata.settings import check_flags

    check_flags("llm serve", {"--n-parallel": ("embedded_n_parallel", n_parallel), "--n-ctx": ("embedded_n_ctx", n_ctx)})
    serve_forever(model, port=port, n_parallel=n_parallel, n_ctx=n_ctx, threads=threads)


@llm_app.command("ledger")
def ledger(
    run_dir: Path = typer.Argument(..., help="A run directory (holds llm-ledger.jsonl) or a ledger file."),
    by: str = typer.Option("purpose", help="Group by: model, purpose or concept_id."),
) -> None:
    """Calls, tokens and cost recorded by a run, grouped by model, purpose or concept."""
    path = run_dir / "llm-ledger.jsonl" if run_dir.is_dir() else run_dir
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist; pass a run directory that has made LLM calls.")
    if by not in ("model", "purpose", "concept_id"):
        raise typer.BadParameter("--by must be one of model, purpose, concept_id.")
    book = Ledger(path)
    # Short headers and an unwrapped key column: the table stays whole in an 80-column terminal.
    table = Table(title=f"LLM ledger: {path}", box=box.SIMPLE_HEAD, title_justify="left")
    for column in (by, "calls", "cached", "prompt tok.", "compl. tok.", "USD"):
        table.add_column(column, justify="left" if column == by else "right", no_wrap=True)
    groups = book.totals(by=by, session_only=False)
    for key, totals in sorted(groups.items(), key=lambda kv: str(kv[0])):
        table.add_row(str(key), str(totals.calls), str(totals.cache_hits), str(totals.prompt_tokens),
                      str(totals.completion_tokens), f"{totals.cost_usd:.6f}")
    overall = book.totals(session_only=False)
    table.add_row("total", str(overall.calls), str(overall.cache_hits), str(overall.prompt_tokens),
                  str(overall.completion_tokens), f"{overall.cost_usd:.6f}", style="bold")
    Console().print(table)
