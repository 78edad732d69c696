"""Stages `judge` and `report`: rate the steered generations, then score, rank and plot everything."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pyarrow as pa

from axdata.errors import InputError
from axdata.llm import ChatBackend
from axeval.judge import Judge, JudgeConfig, summarize_judgements, write_judgements
from axeval.pipeline import RunContext, Stage
from axeval.protocol import FIXED, parse_failures_score_zero
from axeval.report import build_report


def judge_generations(backend: ChatBackend, settings: JudgeConfig, generations: Path, out: Path | None, *,
                      run_async: Callable[[Awaitable[pd.DataFrame]], pd.DataFrame] | None = None,
                      protocol: str = FIXED) -> dict[str, Any]:
    """The judge stage (`axbench run`'s and `axbench eval judge`'s one implementation): three ratings per steered
    generation of the parquet file `generations`, written to `out` (None: judged and summarised, not written — a
    dry run's estimate). `run_async` runs the judging coroutine on the caller's event loop (a run keeps one for its
    whole length); default: the backend's own. `protocol="reference"`: one ask per rating (axeval.protocol)."""
    judge = Judge(backend, settings, protocol=protocol)
    try:
        frame = pd.read_parquet(generations)
    except (pa.ArrowException, ValueError) as error:  # a damaged or foreign file: the user's to replace
        raise InputError(f"{generations}: not a readable parquet file of steered generations ({error}).") from None
    judgements = run_async(judge.ajudge(frame)) if run_async is not None else judge.judge(frame)
    if out is not None:
        write_judgements(judgements, out)
    return summarize_judgements(judgements)


class JudgeStage(Stage):
    """Judges the generations another stage wrote (`source`: its name and its file in the run's inference/ folder)
    into `judgements` in eval/; the suppression judge is this stage on the suppression stage's file."""

    name = "judge"
    description = "rate every steered generation for concept, instruction and fluency with the LLM judge"
    source: ClassVar[str] = "steering"
    judgements: ClassVar[str] = "judgements.parquet"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        llm = ctx.config.llm
        return {self.source: ctx.stamp_hash(self.source), "judge": dataclasses.asdict(ctx.config.judge),
                "llm": {"endpoint": llm.endpoint, "model": llm.model, "structured_output": llm.structured_output},
                # the reference judge asks once; named only then, so finished default runs keep their stamp
                **({} if ctx.config.run.protocol == FIXED else {"protocol": ctx.config.run.protocol})}

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.run_dir.eval_dir / self.judgements]

    def describe(self, s: dict[str, Any]) -> str:
        return (f"{s['generations']} generations, {s['calls']} calls, ${s['cost_usd']:.4f}, "
                f"{s['parse_failures']} parse failures")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        return judge_generations(ctx.llm(), ctx.config.judge, ctx.run_dir.inference_dir / f"{self.source}.parquet",
                                 ctx.run_dir.eval_dir / self.judgements, run_async=ctx.run_async,
                                 protocol=ctx.config.run.protocol)


class ReportStage(Stage):
    name = "report"
    description = "detection and steering metrics with CIs, leaderboard, plots, .eval_results"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        return {"latent": ctx.stamp_hash("latent"), "judge": ctx.stamp_hash("judge"),
                **({"suppression": ctx.stamp_hash("suppression-judge")} if ctx.config.evaluation.suppresses else {}),
                "report": dataclasses.asdict(ctx.config.report), "seed": ctx.config.run.seed,
                "protocol": ctx.config.run.protocol}

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.run_dir.eval_dir / "report.md"]

    def describe(self, s: dict[str, Any]) -> str:
        return f"{Path(s['report']).parent.name}/{Path(s['report']).name}"

    def run(self, ctx: RunContext) -> dict[str, Any]:
        settings = ctx.config.report
        report = build_report(ctx.run_dir.root, ctx.run_dir.eval_dir, baseline=settings.baseline,
                              suppression=settings.suppression,
                              dataset_id=settings.dataset_id,
                              n_resamples=settings.n_resamples, seed=ctx.config.run.seed,
                              parse_failures_as_zero=parse_failures_score_zero(ctx.config.run.protocol),
                              note=settings.note)
        return {"report": str(report.files["markdown"]), "leaderboard": str(report.files["leaderboard"])}
