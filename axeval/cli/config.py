"""`axbench config show [CONFIG] [--set …]`: the fully resolved run config, every default filled in."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

config_app = typer.Typer(help="Inspect run configs.", no_args_is_help=True)


@config_app.command("show")
def show(
    config: Path | None = typer.Argument(None, help="YAML run config; omitted: the defaults alone."),
    set_: list[str] | None = typer.Option(None, "--set", "-s",
                                        help="Override a config value: section.key=value (YAML-typed)."),
) -> None:
    """Print the resolved config as YAML: exactly the protocol a run would use (factors, top_k, judge temperature,
    run.protocol, …), validated as `axbench run` validates it."""
    from axeval.config import AxbenchConfig, ConfigError  # deferred: the CLI starts without torch

    try:
        resolved = AxbenchConfig.load(config, set_ or [])
    except ConfigError as err:
        typer.echo(f"Config error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"# {config or 'defaults'} resolved; config hash {resolved.hash()}")
    typer.echo(yaml.safe_dump(resolved.to_dict(), sort_keys=False, allow_unicode=True), nl=False)
