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
    for line in resolved_plan(resolved):  # YAML comments: the output stays a valid config
        typer.echo(f"# {line}")


def resolved_plan(config: AxbenchConfig) -> list[str]:
    """What the run will do, in words: its stages and, with suppression, the factors, defences and attacks."""
    from axeval.stages import default_stages

    lines = [f"stages: {', '.join(stage.name for stage in default_stages(config))}"]
    evaluation = config.evaluation
    if evaluation.suppresses:
        factors = evaluation.suppression_factors or config.inference.factors
        lines.append(f"suppression: methods with a factor steer with -factor over {factors} (RePS-family methods "
                     f"over their own grid, negated); defences: {', '.join(evaluation.defences) or 'none'}; "
                     "the unsteered model")
        variants = [a if n is None else f"{a}-{n}" for a, n in evaluation.attacks]
        lines.append(f"attacks: {', '.join(variants)} (each at the factor chosen without attack)")
    if "rules" in evaluation.modes:
        lines.append("rules: rule concepts with a checker are scored by it too (axeval.rules)")
    return lines


def load_run_config(path: Path | None, overrides: Sequence[str]) -> AxbenchConfig:
    """The run config every command loads (`CONFIG` / `--config` + `--set`); a bad one is a usage error (exit 2)."""
    from axeval.config import AxbenchConfig, ConfigError  # deferred: the CLI starts without torch

    try:
        return AxbenchConfig.load(path, overrides)
    except ConfigError as err:
        typer.echo(f"Config error: {err}", err=True)
        raise typer.Exit(2) from None
