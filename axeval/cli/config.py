"""`axbench config show [CONFIG] [--set …]`: the fully resolved run config, every default filled in."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import yaml

if TYPE_CHECKING:
    from axeval.config import AxbenchConfig

config_app = typer.Typer(help="Inspect run configs.", no_args_is_help=True)


@config_app.command("show")
def show(
    config: Path | None = typer.Argument(None, help="YAML run config; omitted: the defaults alone."),
    set_: list[str] | None = typer.Option(None, "--set", "-s",
                                        help="Override a config value: section.key=value (YAML-typed)."),
) -> None:
    """Print the resolved config as YAML: exactly the protocol a run would use (factors, top_k, judge temperature,
    run.protocol, …), validated as `axbench run` validates it."""
    resolved = load_run_config(config, set_ or [])
    typer.echo(f"# {config or 'defaults'} resolved; config hash {resolved.hash()}")
    typer.echo(yaml.safe_dump(resolved.to_dict(), sort_keys=False, allow_unicode=True), nl=False)


def load_run_config(path: Path | None, overrides: Sequence[str]) -> AxbenchConfig:
    """The run config every command loads (`CONFIG` / `--config` + `--set`); a bad one is a usage error (exit 2)."""
    from axeval.config import AxbenchConfig, ConfigError  # deferred: the CLI starts without torch

    try:
        return AxbenchConfig.load(path, overrides)
    except ConfigError as err:
        typer.echo(f"Config error: {err}", err=True)
        raise typer.Exit(2) from None
