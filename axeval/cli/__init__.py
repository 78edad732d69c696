"""The `axbench` command line: `axbench <resource> <action>`."""

from __future__ import annotations

import logging
import sys
import traceback

import typer

from axdata.settings import SettingsError
from axeval.cli.config import config_app
from axeval.cli.curate import curate_app
from axeval.cli.data import data_app
from axeval.cli.dictionary import dictionary_app
from axeval.cli.eval import eval_app
from axeval.cli.infer import infer_app
from axeval.cli.leaderboard import leaderboard_app
from axeval.cli.llm import llm_app
from axeval.cli.metrics import metrics_app
from axeval.cli.run import register_run_commands
from axeval.cli.train import train
from axeval.errors import is_user_error, user_message

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
app.add_typer(leaderboard_app, name="leaderboard")
app.add_typer(metrics_app, name="metrics")
app.add_typer(curate_app, name="curate")
app.add_typer(llm_app, name="llm")
app.add_typer(config_app, name="config")
register_run_commands(app)


DEBUG_FLAG = "--debug"
LOGGERS = ("axdata", "axmethods", "axeval")


def configure_logging(debug: bool = False) -> None:
    """One console handler on our loggers (INFO, DEBUG with --debug); calling it again replaces it.

    It writes to stderr: stdout carries only a command's result, so `axbench eval report RUN --json | jq` works.
    """
    from rich.console import Console
    from rich.logging import RichHandler

    # RichHandler's default console is rich's global one, which writes to stdout.
    handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False, rich_tracebacks=debug)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.set_name("axbench-cli")
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == "axbench-cli"]:
            logger.removeHandler(old)
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> None:
    """The `axbench` entry point: no traceback for an error unless `--debug` (anywhere on the line) asks for it.

    Exit codes: 0 success, 1 a failure (bad input, a failed stage, an unreachable service), 2 a usage error
    (unknown command or option, an invalid config, setting or method name), always on stderr.
    """
    # The CLI is an application: it may configure logging; the library never does.
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args
    args = [arg for arg in args if arg != DEBUG_FLAG]
    configure_logging(debug)
    try:
        from axmethods.distributed import announce, barrier

        announce()  # under torchrun / accelerate launch: "process 1 of 2", once; bars and INFO logs on rank 0 only
        try:
            app(args=args, prog_name="axbench")
        except SystemExit as done:
            if done.code in (0, None):
                barrier()  # every process ends when rank 0 has written what a next command reads
            raise
    except KeyboardInterrupt:
        print("axbench: interrupted; run the same command again to resume.", file=sys.stderr)
        raise SystemExit(130) from None
    except SettingsError as error:  # a config file, --set or method name that cannot work: a usage error
        if debug:
            raise
        print(f"axbench: usage error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as error:
        if debug:
            raise
        if is_user_error(error):  # one line, exit 1
            print(f"axbench: error: {user_message(error)} (--debug shows the traceback)", file=sys.stderr)
            raise SystemExit(1) from None
        # A defect of ours: the traceback is what a report needs, so it is shown, with one line saying so.
        traceback.print_exc(file=sys.stderr)
        print(f"axbench: internal error ({type(error).__name__}): {error}. This is a bug in axbench: please report "
              "it with the traceback above.", file=sys.stderr)
        raise SystemExit(1) from None
