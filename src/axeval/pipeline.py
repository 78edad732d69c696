"""The pipeline runner: stages in order, each skipped when its outputs exist and are current.

A stage is current when its stamp (``stages/<name>.json``) holds the same fingerprint: a hash of the
stage's name, version and declared inputs (config sections, upstream stamps, input files). Stamps
are written atomically after a stage succeeds, so an interrupted run resumes at the stage it was in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, ClassVar, Sequence, TypeVar

from axdata.generation import ChatBackend, Ledger, open_llm
from axdata.hashing import content_hash
from axeval.config import AxbenchConfig
from axeval.rundir import RunDirectory
from axmethods.models import TargetModel, load_target_model

logger = logging.getLogger(__name__)
T = TypeVar("T")


class RunContext:
    """What stages share within one run: the config, the run directory, and lazily opened resources."""

    def __init__(self, config: AxbenchConfig, run_dir: RunDirectory):
        self.config = config
        self.run_dir = run_dir
        self._stack = ExitStack()
        # One event loop for the whole run: async clients stay bound to the loop they first ran on.
        self._loop = asyncio.new_event_loop()
        self._target: TargetModel | None = None
        self._llm: Any = None

    def run_async(self, awaitable: Awaitable[T]) -> T:
        return self._loop.run_until_complete(awaitable)

    def target_model(self) -> TargetModel:
        if self._target is None:
            self._target = load_target_model(self.config.model)
        return self._target

    def llm(self) -> ChatBackend:
        """The configured LLM (the embedded server is started on first use and stopped at the end)."""
        if self._llm is None:
            self._llm = self._stack.enter_context(
                open_llm(self.config.llm, cache_path=self.run_dir.llm_cache_path,
                         ledger_path=self.run_dir.llm_ledger_path)
            )
        return self._llm

    @property
    def ledger(self) -> Ledger | None:
        return getattr(self._llm, "ledger", None)

    def stamp_hash(self, stage: str) -> str | None:
        stamp = self.run_dir.read_stamp(stage)
        return stamp["fingerprint"] if stamp else None

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self._loop.close()


class Stage(ABC):
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""

    @abstractmethod
    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        """Everything the stage's outputs depend on; a change re-runs the stage."""

    @abstractmethod
    def outputs(self, ctx: RunContext) -> list[Path]:
        """Files the stage writes; a missing one re-runs the stage."""

    @abstractmethod
    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Do the work; return a small JSON-able summary for the stamp and the final report."""

    def provenance(self, config: AxbenchConfig) -> dict[str, Any]:
        """Hashes of input files and prompt templates, recorded in the run's config.yaml."""
        return {}

    def fingerprint(self, ctx: RunContext) -> str:
        return content_hash({"stage": self.name, "version": self.version, "inputs": self.inputs(ctx)})


@dataclass
class StageResult:
    name: str
    status: str  # "ran" or "skipped"
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    run_dir: Path
    stages: list[StageResult]
    llm_totals: Any = None
    seconds: float = 0.0


def config_hashes(config: AxbenchConfig, stages: Sequence[Stage]) -> dict[str, Any]:
    hashes: dict[str, Any] = {"config": config.hash()}
    for stage in stages:
        hashes.update(stage.provenance(config))
    return hashes


def run_pipeline(config: AxbenchConfig, stages: Sequence[Stage], *, force: bool = False) -> PipelineResult:
    run_dir = RunDirectory(config.run_dir)
    run_dir.root.mkdir(parents=True, exist_ok=True)
    run_dir.write_config(config.to_dict(), config_hashes(config, stages))
    started = time.perf_counter()
    ctx = RunContext(config, run_dir)
    results: list[StageResult] = []
    try:
        for stage in stages:
            fingerprint = stage.fingerprint(ctx)
            stamp = run_dir.read_stamp(stage.name)
            current = (
                not force
                and stamp is not None
                and stamp.get("fingerprint") == fingerprint
                and all(path.exists() for path in stage.outputs(ctx))
            )
            if current:
                logger.info("stage %s is current, skipped", stage.name)
                results.append(StageResult(stage.name, "skipped", 0.0, stamp.get("summary", {})))
                continue
            logger.info("stage %s: %s", stage.name, stage.description)
            t0 = time.perf_counter()
            summary = stage.run(ctx)
            seconds = time.perf_counter() - t0
            run_dir.write_stamp(stage.name, {"fingerprint": fingerprint, "seconds": seconds, "summary": summary,
                                             "finished": time.time()})
            results.append(StageResult(stage.name, "ran", seconds, summary))
        totals = ctx.ledger.totals() if ctx.ledger is not None else None
    finally:
        ctx.close()
    return PipelineResult(run_dir.root, results, totals, time.perf_counter() - started)
