"""The pipeline runner: stages in order, each skipped when its outputs exist and are current.

A stage is current when its stamp (``stages/<name>.json``) holds the same fingerprint: a hash of the
stage's name, version and declared inputs (config sections, upstream stamps, input files). Stamps
are written atomically after a stage succeeds, so an interrupted run resumes at the stage it was in.
A run holds an exclusive lock on its directory for its whole length: two runs never write one directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from filelock import FileLock, Timeout

from axdata.errors import AxbenchError
from axdata.hashing import content_hash
from axdata.io import atomic_write_text
from axdata.llm import ChatBackend, Ledger, open_llm
from axeval.config import AxbenchConfig
from axeval.errors import is_user_error, user_message
from axeval.rundir import LOCK_FILE, LOCK_OWNER_FILE, RunDirectory
from axmethods.distributed import barrier, broadcast, is_main, world_size
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
    # Under a distributed launcher: True = every process runs the stage (it splits its own work and only rank 0
    # writes); False = rank 0 runs it while the others wait (LLM stages: the LLM server scales those).
    distributed: ClassVar[bool] = False

    @abstractmethod
    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        """Everything the stage's outputs depend on; a change re-runs the stage."""

    @abstractmethod
    def outputs(self, ctx: RunContext) -> list[Path]:
        """Files the stage writes; a missing one re-runs the stage."""

    @abstractmethod
    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Do the work; return a small JSON-able summary for the stamp and the final report."""

    def describe(self, summary: dict[str, Any]) -> str:
        """What `run` made, in a few words for the end-of-run table (stages say it their way)."""
        text = json.dumps(summary, ensure_ascii=False, default=str)
        return text if len(text) <= 120 else text[:117] + "..."

    def provenance(self, config: AxbenchConfig) -> dict[str, Any]:
        """Hashes of input files and prompt templates, recorded in the run's config.yaml."""
        return {}

    def fingerprint(self, ctx: RunContext) -> str:
        return content_hash({"stage": self.name, "version": self.version, "inputs": self.inputs(ctx)})


def _describe(stage: Stage, summary: dict[str, Any]) -> str:
    try:
        return stage.describe(summary)
    except (KeyError, TypeError, ValueError, AttributeError):  # a stamp from an older version: show it raw
        return Stage.describe(stage, summary)


def join_counts(values: dict[str, Any]) -> str:
    """{"train": 64, "latent": 68} → "train 64, latent 68" (for Stage.describe)."""
    return ", ".join(f"{key} {value}" for key, value in values.items())


@dataclass
class StageResult:
    name: str
    status: str  # "ran" or "skipped"
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    line: str = ""  # the summary in a few words, for people (Stage.describe)


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


class StageError(AxbenchError, RuntimeError):
    """A stage failed; the message names the stage and the cause (the cause is chained for --debug)."""


class RunLockedError(AxbenchError, RuntimeError):
    """Another process holds the run directory; the message says who and what to do."""


_RUN = "axbench run"


@contextmanager
def locked_run_directory(root: Path, command: str = _RUN) -> Iterator[None]:
    """One writer per run directory: an exclusive lock (`filelock`, released by the OS if the holder dies) for
    the whole run, or for a `command` writing into it (`infer latent`, `eval report`, …); a second writer fails at
    once, naming the holder, instead of trampling the first one's files."""
    root.mkdir(parents=True, exist_ok=True)
    lock, owner = FileLock(root / LOCK_FILE), root / LOCK_OWNER_FILE
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = owner.read_text(encoding="utf-8").strip() if owner.exists() else "another process"
        fix = "or give this run another run.name / run.output_dir" if command == _RUN else \
            f"then run `{command}` again"
        raise RunLockedError(f"The run directory {root} is in use by {holder}. Wait for it to finish (or stop "
                             f"it), {fix}.") from None
    try:
        # Holding the lock, no one else writes here: temporary files are leftovers of a killed writer.
        for stale in root.rglob(".*.tmp"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
        atomic_write_text(owner, f"{command} (pid {os.getpid()} on {socket.gethostname()}, started "
                                 f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


@contextmanager
def locked_run_directories(roots: Sequence[Path], command: str = _RUN) -> Iterator[None]:
    """The locks of every run directory in `roots` (`locked_run_directory`), for one writer touching several.

    Under a distributed launcher rank 0 alone takes them (it is the one writer); the others learn whether it got
    them and stop with the same error when it did not.
    """
    with ExitStack() as locks:
        refusal = None
        if is_main():
            try:
                unique: dict[Path, Path] = {}  # each directory once, however it is spelled
                for root in roots:
                    unique.setdefault(Path(root).resolve(), Path(root))
                for root in unique.values():
                    locks.enter_context(locked_run_directory(root, command))
            except RunLockedError as error:
                refusal = str(error)
        refusal = broadcast(refusal)
        if refusal is not None:
            raise RunLockedError(refusal)
        yield


def run_pipeline(config: AxbenchConfig, stages: Sequence[Stage], *, force: bool = False) -> PipelineResult:
    """Run the stages in order (current ones skipped) inside the run directory's lock.

    Under a distributed launcher rank 0 alone takes the lock (it is the one writer); the others learn whether it
    got it and stop with the same error when it did not.
    """
    with locked_run_directories([Path(config.run_dir)]):
        return _run_stages(config, stages, force)


def _run_stages(config: AxbenchConfig, stages: Sequence[Stage], force: bool) -> PipelineResult:
    run_dir = RunDirectory(config.run_dir)
    if is_main():
        run_dir.write_config(config.to_dict(), config_hashes(config, stages))
    started = time.perf_counter()
    ctx = RunContext(config, run_dir)
    results: list[StageResult] = []
    try:
        for stage in stages:
            fingerprint = stage.fingerprint(ctx)
            stamp = run_dir.read_stamp(stage.name)
            current = broadcast(  # rank 0's view decides for every process, so all of them take the same path
                not force
                and stamp is not None
                and stamp.get("fingerprint") == fingerprint
                and all(path.exists() for path in stage.outputs(ctx))
            )
            if current:
                logger.info("stage %s is current, skipped", stage.name)
                summary = stamp.get("summary", {})
                results.append(StageResult(stage.name, "skipped", 0.0, summary, _describe(stage, summary)))
                continue
            logger.info("stage %s: %s", stage.name, stage.description)
            t0 = time.perf_counter()
            try:
                summary = _run_stage(stage, ctx)
            except Exception as error:
                if not is_user_error(error):  # a defect of ours: it propagates with its own traceback
                    logger.error("stage %s failed on a bug in axbench; its finished work is kept", stage.name)
                    raise
                raise StageError(f"stage {stage.name!r} failed: {user_message(error).rstrip('.')}. Its finished "
                                 "work is kept; fix the cause and run the same command again to resume.") from error
            seconds = time.perf_counter() - t0
            if is_main():
                run_dir.write_stamp(stage.name, {"fingerprint": fingerprint, "seconds": seconds, "summary": summary,
                                                 "finished": time.time()})
            barrier()  # the next stage reads what this one wrote
            results.append(StageResult(stage.name, "ran", seconds, summary, _describe(stage, summary)))
        totals = ctx.ledger.totals() if ctx.ledger is not None else None
    finally:
        ctx.close()
    return PipelineResult(run_dir.root, results, totals, time.perf_counter() - started)


class OtherProcessError(AxbenchError, RuntimeError):
    """Rank 0 failed a stage it ran alone; the other processes stop with its message."""


def _run_stage(stage: Stage, ctx: RunContext) -> dict[str, Any]:
    """Run `stage` here; a rank-0-only stage runs on rank 0 while the others wait for its outcome (summary or
    error) — one broadcast, under the process group's long timeout (`axmethods.distributed`)."""
    if stage.distributed or world_size() == 1:
        return stage.run(ctx)
    outcome: tuple[dict[str, Any] | None, str | None] = (None, None)
    if is_main():
        try:
            outcome = (stage.run(ctx), None)
        except Exception as error:
            broadcast((None, f"{type(error).__name__}: {error}"))
            raise
    summary, failure = broadcast(outcome)
    if failure is not None:
        raise OtherProcessError(f"rank 0 failed: {failure}")
    return summary or {}
