"""The `axbench` command line: `axbench <resource> <action>`."""

from __future__ import annotations

import logging

import typer

from axeval.cli.config import config_app
from axeval.cli.curate import curate_app
from axeval.cli.data import data_app
from axeval.cli.dictionary import dictionary_app
from axeval.cli.eval import eval_app
from axeval.cli.infer import infer_app
from axeval.cli.llm import llm_app
from axeval.cli.run import register_run_commands
from axeval.cli.train import train

app = typer.Typer(
    name="axbench",
    help="Benchmark concept detection and steering in language models (AxBench), the Hugging Face way.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

app.add_typer(data_app, name="data")
app.command("train")(train)
app.add_typer(infer_app, name="infer")
app.add_typer(dictionary_app, name="dictionary")
app.add_typer(eval_app, name="eval")
app.add_typer(curate_app, name="curate")
app.add_typer(llm_app, name="llm")
app.add_typer(config_app, name="config")
register_run_commands(app)


def main() -> None:
    # The CLI is an application: it may configure logging; the library never does.
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("axdata", "axmethods", "axeval"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    app()
