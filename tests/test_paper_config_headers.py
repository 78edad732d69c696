"""The commands in the shipped configs' comment headers (configs/, the paper configs included) run as written.

Each header line `#   axbench …` is parsed against the real CLI (click's own parsing: every subcommand, option
name, value type and required argument) without running the command; a command that takes a run config and
`--set` also loads that config with those overrides, as the command would first. Any other mention of
`axbench <resource>` in a header is prose around a command and fails the test, so every command sits on a line
of its own where this test sees it. `RELEASED` stands for a folder the reader has (AxBench's released data).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

# Typer vendors its own click (typer._click); its contexts and errors are those classes, not the click package's.
from typer._click.exceptions import ClickException, NoSuchOption, UsageError

from axeval.cli import app

ROOT = Path(__file__).resolve().parents[1]
# Every shipped config: the paper configs and the CPU ones beside them (configs/concept10-smollm2.yaml).
PAPER_CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
_COMMAND_LINE = re.compile(r"^#\s+(axbench\s.*)$")


def _header(path: Path) -> list[str]:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def header_commands(path: Path) -> list[str]:
    return [match.group(1).strip() for line in _header(path) if (match := _COMMAND_LINE.match(line))]


def parse_command(argv: list[str]):  # -> typer's click Context
    """Walk the command tree as a real call does (a group's `invoke` resolves the subcommand from the context's
    protected args) and return the leaf command's context: its parsed and converted parameters. A usage error
    raises `UsageError` (`NoSuchOption`, `BadParameter`, `MissingParameter`). Nothing runs."""
    command = typer.main.get_command(app)
    ctx = command.make_context("axbench", list(argv))
    while hasattr(command, "resolve_command"):  # a group
        name, command, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.name)
def test_every_header_command_parses_against_the_cli(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from axeval.cli.config import load_run_config

    monkeypatch.chdir(ROOT)  # the headers' paths are relative to the repository root, as in the README
    commands = header_commands(path)
    assert any(command.startswith(f"axbench run {path.relative_to(ROOT).as_posix()}") for command in commands)
    prose = [line for line in _header(path) if "axbench " in line and not _COMMAND_LINE.match(line)]
    assert not prose, f"{path.name}: a command inside prose (put it on a line `#   axbench …`): {prose}"
    for command in commands:
        argv = shlex.split(command)[1:]
        try:
            ctx = parse_command(argv)
        except ClickException as error:
            pytest.fail(f"{path.name}: `{command}` does not parse: {error.format_message()}")
        for value in argv:  # a config file the command names must exist
            if value.endswith((".yaml", ".yml")):
                assert (ROOT / value).is_file(), f"{path.name}: `{command}` names {value}, which does not exist"
        config, overrides = ctx.params.get("config"), ctx.params.get("set_")
        if isinstance(config, Path) and overrides:
            load_run_config(config, overrides)  # exits 2 (typer.Exit) on an unknown key or a bad value


def test_a_wrong_option_is_caught() -> None:
    # The check itself must be able to fail: the spelling the headers used to carry is refused.
    with pytest.raises(NoSuchOption, match="--config"):
        parse_command(["data", "import", "RELEASED", "data/concept500", "--config", "gemma-2-2b-it-l10"])
    with pytest.raises(UsageError):
        parse_command(["data", "imports", "RELEASED"])
    assert parse_command(["data", "import", "RELEASED", "--dataset-config", "x"]).params["config"] == "x"
