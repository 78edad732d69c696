"""Stages `judge` and `report`: rate the steered generations, then score, rank and plot everything."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from axeval.judge import Judge, summarize_judgements, write_judgements
from axeval.pipeline import RunContext, Stage
from axeval.protocol import parse_failures_score_zero
from axeval.report import build_report


class JudgeStage(Stage):
    name = "judge"
    description = "rate every steered generation for concept, instruction and fluency with the LLM judge"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        llm = ctx.config.llm
        return {"steering": ctx.stamp_hash("steering"), "judge": dataclasses.asdict(ctx.config.judge),
                "llm": {"endpoint": llm.endpoint, "model": llm.model, "structured_output": llm.structured_output}}

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.run_dir.eval_dir / "judgements.parquet"]

    def describe(self, s: dict[str, Any]) -> str:
        return (f"{s['generations']} generations, {s['calls']} calls, ${s['cost_usd']:.4f}, "
                f"{s['parse_failures']} parse failures")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        generations = pd.read_parquet(ctx.run_dir.inference_dir / "steering.parquet")
        judgements = ctx.run_async(Judge(ctx.llm(), ctx.config.judge).ajudge(generations))
        write_judgements(judgements, ctx.run_dir.eval_dir / "judgements.parquet")
        return summarize_judgements(judgements)


class ReportStage(Stage):
    name = "report"
    description = "detection and steering metrics with CIs, leaderboard, plots, .eval_results"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        return {"latent": ctx.stamp_hash("latent"), "judge": ctx.stamp_hash("judge"),
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
