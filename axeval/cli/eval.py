"""`axbench eval …`: score detection and steering, run the judge, build reports, push a run's results to the Hub."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console

from axdata.errors import AxbenchError
from axeval.cli.display import leaderboard_table, print_leaderboard
from axeval.cli.grammar import renamed_command
from axeval.cli.leaderboard import push as push_leaderboard
from axeval.cli.leaderboard import show as show_leaderboard
from axeval.cli.metrics import push as push_metrics
from axeval.stats import DEFAULT_RESAMPLES, DEFAULT_SEED, by_method

_PROTOCOL_HELP = ("'fixed' (default): unparsed judge answers are excluded and counted; 'reference': they score 0, "
                  "as in AxBench (docs/protocol.md).")

eval_app = typer.Typer(help="Score detection and steering, judge generations, build reports, push results.",
                       no_args_is_help=True)

_SET_HELP = "Override a config value: section.key=value (YAML-typed), repeatable, e.g. llm.max_usd=1."


def _read(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist; pass the {what} parquet file.")
    return pd.read_parquet(path)


def _print_leaderboard(frame: pd.DataFrame, prefix: str, title: str) -> None:
    """The compact leaderboard of one part (rich, fits 80 columns); `--json` prints every field."""
    methods = by_method(frame, prefix)
    if prefix == "detection_":  # eval detect merges the imbalance columns in as imbalance_*
        methods = {m: {k.replace("detection_imbalance_", "imbalance_"): v for k, v in values.items()}
                   for m, values in methods.items()}
    console = Console()
    console.print(leaderboard_table(methods, title=title))
    counts = {values.get(f"{prefix}n_concepts") for values in methods.values()}
    console.print(f"Mean over concepts (n = {', '.join(map(str, sorted(c for c in counts if c is not None)))}), "
                  "95% bootstrap interval below; every field with --json.", highlight=False)


def _fail(error: Exception) -> None:
    typer.echo(str(error), err=True)
    raise typer.Exit(1) from None


@eval_app.command("detect")
def detect(
    latent: Path = typer.Argument(..., help="Latent-inference parquet: method, concept_id, category, score."),
    imbalance: Path | None = typer.Option(None, help="The latent_imbalance inference parquet (shared "
                                             "negatives, concept_id -1): adds precision / recall / F1."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object keyed by method."),
    resamples: int = typer.Option(DEFAULT_RESAMPLES, help="Bootstrap resamples of the concepts."),
    seed: int = typer.Option(DEFAULT_SEED, help="Seed of the bootstrap."),
) -> None:
    """Per method: mean AUROC over concepts with its 95% CI, and hard-negative accuracy (Youden threshold)."""
    from axdata.settings import check_flags
    from axeval import detection

    check_flags("eval detect", {"--resamples": ("n_resamples", resamples), "--seed": ("seed", seed)})
    try:
        latent_rows = _read(latent, "latent")
        summary = detection.summarize_detection(detection.concept_detection(latent_rows), resamples, seed=seed)
        if imbalance is not None:
            rows = detection.imbalance_frame(latent_rows, _read(imbalance, "imbalance"))
            skewed = detection.summarize_imbalance(detection.imbalance_detection(rows), resamples, seed=seed)
            summary = summary.merge(skewed.add_prefix("imbalance_").rename(columns={"imbalance_method": "method"}),
                                    on="method", how="left")
    except ValueError as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps(by_method(summary), indent=2))
    else:
        _print_leaderboard(summary, "detection_", f"Concept detection: {latent.name}")


@eval_app.command("judge")
def judge(
    steering_file: Path = typer.Argument(..., help="Steered generations: method, concept_id, concept, prompt_id, "
                                         "half, instruction, generation, factor."),
    out: Path = typer.Option(..., "--out", help="Where the judged parquet goes."),
    config: Path | None = typer.Option(None, help="A run config: its llm section picks the judge."),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=_SET_HELP),
    temperature: float | None = typer.Option(None, help="Judge temperature (default: the config's judge section, "
                                                        "0.7 as AxBench's evaluate.py)."),
    parse_retries: int | None = typer.Option(None, help="Extra asks after an unparseable answer (default: config)."),
    on_parse_failure: str | None = typer.Option(None, help="'exclude' (record and count) or 'raise' (default: "
                                                           "config, 'exclude')."),
    cache: Path | None = typer.Option(None, help="Response cache (default: llm-cache.sqlite beside --out)."),
    ledger: Path | None = typer.Option(None, help="Ledger (default: llm-ledger.jsonl beside --out)."),
) -> None:
    """Rate every generation on concept, instruction and fluency; write ratings, raw answers and provenance. The
    same judge stage as `axbench run` (`axeval.stages.evaluation`)."""
    from axdata.llm import open_llm
    from axdata.settings import build_settings
    from axeval.cli.config import load_run_config
    from axeval.judge import JudgeConfig
    from axeval.protocol import check_judge_settings
    from axeval.stages.evaluation import judge_generations

    settings = load_run_config(config, set_ or [])
    # The config's judge section (with --set) is the base; explicit options override it.
    given = {k: v for k, v in {"temperature": temperature, "parse_retries": parse_retries,
                               "on_parse_failure": on_parse_failure}.items() if v is not None}
    try:  # e.g. --parse-retries 2 under the reference protocol, whose judge asks once (a plain ValueError there)
        check_judge_settings(settings.run.protocol, given)
    except ValueError as error:
        _fail(error)
    try:
        judge_config = build_settings(JudgeConfig, {**dataclasses.asdict(settings.judge), **given}, where="judge")
    except AxbenchError as error:
        _fail(error)
    if not steering_file.exists():
        raise typer.BadParameter(f"{steering_file} does not exist; pass the steering generations parquet file.")
    dry_run = settings.llm.dry_run
    from axeval.pipeline import locked_run_directories
    from axeval.rundir import enclosing_run_directories

    try:  # the run directory it writes into (if any) is locked, as `axbench run` locks it
        with locked_run_directories(enclosing_run_directories([] if dry_run else [out]), "axbench eval judge"), \
                open_llm(settings.llm, cache_path=cache or out.parent / "llm-cache.sqlite",
                         ledger_path=ledger or out.parent / "llm-ledger.jsonl") as client:
            summary = judge_generations(client, judge_config, steering_file, None if dry_run else out,
                                        protocol=settings.run.protocol)
    except AxbenchError as error:
        _fail(error)
    if dry_run:
        typer.echo(f"Dry run: {summary['calls']} judge calls, estimated ${summary['cost_usd']:.4f}; nothing written.")
        return
    typer.echo(f"Judged {summary['generations']} generations with {', '.join(summary['judge_model'])} "
               f"({summary['calls']} calls, ${summary['cost_usd']:.4f}"
               + (f", ${summary['reused_cost_usd']:.4f} of it reused from the cache" if summary['reused_cost_usd'] else "")
               + "); parse failures: "
               f"{summary['parse_failures']}. Wrote {out}.")


@eval_app.command("steering")
def steering_(
    judged: Path = typer.Argument(..., help="Judged generations (`axbench eval judge` output)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object keyed by method."),
    baseline: str | None = typer.Option(None, help="Add the winrate against this method (paper: SAE)."),
    suppression: bool = typer.Option(False, help="Score concept suppression (concept rating inverted)."),
    resamples: int = typer.Option(DEFAULT_RESAMPLES, help="Bootstrap resamples of the concepts."),
    seed: int = typer.Option(DEFAULT_SEED, help="Seed of the bootstrap."),
    protocol: str = typer.Option("fixed", help=_PROTOCOL_HELP),
) -> None:
    """Per method: held-out steering score at the factor chosen on the selection half, with its 95% CI."""
    from axdata.settings import check_flags
    from axeval import steering
    from axeval.protocol import check_protocol, parse_failures_score_zero

    check_flags("eval steering", {"--resamples": ("n_resamples", resamples), "--seed": ("seed", seed)})
    try:
        scored = steering.score_generations(_read(judged, "judged generations"), suppression=suppression,
                                            parse_failures_as_zero=parse_failures_score_zero(check_protocol(protocol)))
        selected = steering.select_factors(scored)
        summary = steering.summarize_steering(selected, scored, resamples, seed=seed)
        if baseline is not None:
            rates = steering.winrate(selected, baseline)[["method", "winrate"]]
            summary = summary.merge(rates, on="method", how="left")
    except ValueError as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps(by_method(summary), indent=2))
    else:
        _print_leaderboard(summary, "steering_", f"Steering: {judged.name}")


@eval_app.command("report")
def report(
    run_dir: Path = typer.Argument(..., help="A run directory (inference/latent.parquet, eval/judgements.parquet)."),
    out: Path | None = typer.Option(None, help="Output folder (default: RUN_DIR/eval)."),
    baseline: str | None = typer.Option(None, help="Method to compute winrates against (paper: SAE)."),
    suppression: bool = typer.Option(False, help="Score concept suppression (concept rating inverted)."),
    dataset_id: str | None = typer.Option(None, help="Hub dataset repo named in .eval_results; default: the repo "
                                                     "(and commit) the run's data was pulled from."),
    protocol: str = typer.Option("fixed", help=_PROTOCOL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the leaderboard as JSON keyed by method (detection_*, "
                                                        "imbalance_*, steering_*, winrate_* fields, CIs and counts)."),
) -> None:
    """Leaderboard (markdown + self-contained HTML), plots and .eval_results files; prints the summary."""
    from axeval.pipeline import RunLockedError, locked_run_directories
    from axeval.protocol import check_protocol, parse_failures_score_zero
    from axeval.report import build_report
    from axeval.rundir import enclosing_run_directories

    # The report writes into RUN_DIR/eval (or --out): that run directory is locked, as `axbench run` locks it.
    # (A RUN_DIR that does not exist is not created by its lock: the report names what is missing.)
    locked = ([run_dir] if run_dir.is_dir() else []) if out is None else enclosing_run_directories([out])
    try:
        with locked_run_directories(locked, "axbench eval report"):
            result = build_report(run_dir, out, baseline=baseline, suppression=suppression, dataset_id=dataset_id,
                                  parse_failures_as_zero=parse_failures_score_zero(check_protocol(protocol)))
    except (ValueError, FileNotFoundError, RunLockedError) as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps(result.by_method(), indent=2))
        return
    console = Console()
    print_leaderboard(console, {"methods": result.by_method(), "caveats": result.caveats(), "judge": result.judge_line()})
    console.print(f"Report: {result.files['markdown']} (and report.html)", highlight=False, soft_wrap=True)


@eval_app.command("push")
def push(
    run_dir: Path = typer.Argument(..., help="A run directory whose report wrote eval/.eval_results/<method>.yaml "
                                   "(or that file)."),
    repo_id: str = typer.Argument(..., help="The model or steering-dictionary repo the results belong to (it must "
                                  "exist)."),
    method: str | None = typer.Option(None, help="Which method's results (needed when the run has several)."),
    pr: bool = typer.Option(False, "--pr", help="Open a pull request (a community result) instead of committing."),
) -> None:
    """Push a method's .eval_results (benchmark dataset, commit, task, value, interval, judge) to a Hub model repo.

    `axbench dictionary push` carries a dictionary's own results along, read by the same function."""
    from axeval.publish import publish_eval_results

    try:
        published = publish_eval_results(run_dir, repo_id, method=method, create_pr=pr)
    except (AxbenchError, OSError) as error:
        _fail(error)
    typer.echo(f"Pushed {published.path_in_repo} to {published.repo_id}: {published.url}")


# The old spellings, for one release: each prints one line naming the new one, then runs it.
renamed_command(eval_app, "publish", push, old="eval publish", new="eval push")
renamed_command(eval_app, "publish-leaderboard", push_leaderboard, old="eval publish-leaderboard",
                new="leaderboard push")
renamed_command(eval_app, "leaderboard", show_leaderboard, old="eval leaderboard", new="leaderboard show")
renamed_command(eval_app, "push-metrics", push_metrics, old="eval push-metrics", new="metrics push")
