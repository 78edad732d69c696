"""One CLI grammar, `axbench <resource> <action>`, and the old spellings it replaced (kept for one release).

The rules (README, "Using it"):
- `push` / `pull` always mean the Hugging Face Hub (upload / download): `data`, `dictionary`, `eval` (results into a
  model repo), `leaderboard`, `metrics`, `curate` (human labels). `send` / `fetch` talk to an Argilla server.
- Every command that creates a Hub repo takes `--private/--public` (public by default; an existing repo keeps its
  visibility).
- `--result` takes any result of `axbench train` (steering dictionary, BoW, prompt steering, adapters, fine-tuned
  weights, HyperSteer's network).

An old spelling still runs in this release: it prints one line on stderr naming the new spelling, then does what the
new one does. `renamed_command` registers an old command name (hidden from the help), `renamed_flag` is the callback
of an old option name (`renamed_option` declares one, hidden too). `RENAMED` lists them all (the README's table of renamed commands).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand

# Old spelling → new spelling (`axbench …`), shown in the README and checked by tests/test_cli_grammar.py.
RENAMED: dict[str, str] = {
    "eval publish": "eval push",
    "eval publish-leaderboard": "leaderboard push",
    "eval leaderboard": "leaderboard show",
    "eval push-metrics": "metrics push",
    "curate push RUN --dataset NAME": "curate send RUN --dataset NAME",
    "curate pull": "curate fetch",
    "curate publish": "curate push",
    "infer latent --dictionary": "infer latent --result",
    "infer steer --dictionary": "infer steer --result",
    "--no-private": "--public",
}


def deprecation_line(old: str, new: str) -> str:
    return f"axbench: '{old}' is now '{new}' (the old spelling goes in the next release)"


def warn_renamed(old: str, new: str) -> None:
    """The one line an old spelling prints, on stderr (stdout stays the command's output)."""
    typer.echo(deprecation_line(old, new), err=True)


class RenamedCommand(TyperCommand):
    """A command under its old name: says so once, before its arguments are parsed (so `--help` and a usage error
    say it too), then is the new command."""

    old = new = ""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        warn_renamed(self.old, self.new)
        return super().parse_args(ctx, args)


def renamed_command(app: typer.Typer, old_name: str, callback: Callable[..., Any], *, old: str, new: str) -> None:
    """Register `callback` (the new command's function) on `app` as `old_name` too, hidden from the help, printing
    `deprecation_line(old, new)` whenever it is used."""
    cls = type("Renamed", (RenamedCommand,), {"old": old, "new": new})
    app.command(old_name, cls=cls, hidden=True, help=f"Old spelling of `axbench {new}`.")(callback)


def renamed_flag(old: str, new: str) -> Callable[[Any], Any]:
    """The callback of an old option name (declare it `hidden=True`): one deprecation line when it is given."""
    def callback(value: Any) -> Any:
        if value:
            warn_renamed(old, new)
        return value
    return callback


def renamed_option(flag: str, new_flag: str, command: str, default: Any = None) -> Any:
    """An old option name of `command`, hidden from the help: it still takes its value, and says once that it is
    now `new_flag`."""
    return typer.Option(default, flag, hidden=True, callback=renamed_flag(f"{command} {flag}", f"{command} {new_flag}"))


def no_private_option(command: str) -> Any:
    """`--no-private`, the old spelling of `--public` (the default) on the commands that had `--private/--no-private`."""
    return renamed_option("--no-private", "--public", command, default=False)


def one_of_renamed(new: list[str] | None, old: list[str] | None, flag: str, what: str) -> list[str]:
    """The values of an option given under its new name, its old name, or both (the old one already said so)."""
    values = [*(new or []), *(old or [])]
    if not values:
        raise typer.BadParameter(f"missing; pass {flag} {what}.", param_hint=f"'{flag}'")
    return values


PRIVATE_HELP = "Create the repo private or public (default public); an existing repo keeps its visibility."


def private_option() -> Any:
    """`--private/--public`, the same on every command that creates a Hub repo."""
    return typer.Option(False, "--private/--public", help=PRIVATE_HELP)
