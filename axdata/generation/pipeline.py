"""The generation run: concepts in, AxBench-style splits out, resumable after a kill at any point.

Work is cut into units — one genre's shared negatives; per concept its genre, contrast concepts,
training positives, detection-eval rows, steering prompts, preference pairs and, when asked for, its
suppression prompts and many-shot attack examples (`axdata.generation.suppression`). Each finished unit is
committed as one JSON file, written atomically, under `work_dir/<kind>/<key>.json`; a restarted run
loads the committed units and makes only the missing ones. Every request is deterministic (seeded
instruction sampling, a seed per request) and answered requests sit in the LLM cache, so the
restarted run asks the same questions, gets the same answers, and assembles exactly the rows of an
uninterrupted run. A unit records a fingerprint of everything it depends on (config, templates,
models, instruction pool, the concept's text); one that no longer matches is made again.

Splits are assembled from the units at the end, validated against `axdata.schema` and written with
`axdata.builders.write_split`; the report goes to `generation_report.json`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from huggingface_hub.utils import tqdm

from axdata.builders import read_provenance, write_concepts, write_provenance, write_split
from axdata.concepts import Concept
from axdata.errors import InputError
from axdata.generation.asking import Failure
from axdata.generation.config import DataGenerationConfig
from axdata.generation.contrast import contrast_concepts
from axdata.generation.examples import (
    Context,
    Truncate,
    Unit,
    check_steering_pool,
    latent_rows,
    preference_pairs,
    shared_negatives,
    steering_rows,
    train_positives,
    written_latent_rows,
)
from axdata.generation.genre import determine_genre
from axdata.generation.pools import InstructionPool, load_pool
from axdata.generation.report import cost_projection, ledger_summary, sum_counts
from axdata.generation.suppression import attack_shot_rows, suppression_rows, with_train_positives
from axdata.generation.templates import template_versions
from axdata.generation.written import WrittenExamples
from axdata.hashing import content_hash
from axdata.io import atomic_write_json
from axdata.llm.types import ChatBackend
from axdata.schema import EMPTY_CONCEPT, GENRES, SHARED_NEGATIVE_ID, table_from_frame
from axdata.schema import columns as schema_columns

logger = logging.getLogger(__name__)

REPORT_FILE = "generation_report.json"
# Fields that change how the run goes, not what it produces.
_NON_CONTENT_FIELDS = ("concept_path", "examples_path", "max_concepts", "dataset_config", "splits", "concept_concurrency",
                       "target_batch_size")
_NULLABLE_INTS = ("sae_id", "sample_seed")


@dataclass
class GenerationResult:
    out_dir: Path
    dataset_config: str
    rows: dict[str, int]
    report_path: Path
    report: dict[str, Any]


class UnitStore:
    """Committed units: one JSON file each, written atomically, valid only under the same fingerprint."""

    def __init__(self, root: Path, run_fingerprint: str):
        self.root = root
        self.run_fingerprint = run_fingerprint
        self.reused = 0
        self.made = 0

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.json"

    def fingerprint(self, kind: str, key: str, concept: Concept | None) -> str:
        # A rule and a topic with the same text are asked different prompts; topics keep their old fingerprints.
        about = None if concept is None else [concept.concept, concept.ref] + (
            [concept.concept_type] if concept.concept_type != "topic" else [])
        return content_hash([self.run_fingerprint, kind, key, about])

    def load(self, kind: str, key: str, fingerprint: str) -> Unit | None:
        path = self._path(kind, key)
        if not path.exists():
            return None
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None  # cannot happen with atomic writes, but a damaged file only means the unit is redone
        if stored.get("fingerprint") != fingerprint:
            logger.info("%s: made under another config, template or model; making it again", path)
            return None
        return Unit(rows=stored["rows"], counts=stored["counts"],
                    failures=[Failure(**failure) for failure in stored["failures"]], notes=stored["notes"],
                    data=stored["data"])

    def save(self, kind: str, key: str, fingerprint: str, unit: Unit) -> None:
        atomic_write_json(self._path(kind, key), {
            "fingerprint": fingerprint, "rows": unit.rows, "counts": unit.counts,
            "failures": [failure.as_dict() for failure in unit.failures], "notes": unit.notes, "data": unit.data,
        })

    async def get(self, kind: str, key: object, concept: Concept | None, make: Callable[[], Awaitable[Unit]]) -> Unit:
        name = str(key)
        fingerprint = self.fingerprint(kind, name, concept)
        unit = self.load(kind, name, fingerprint)
        if unit is not None:
            self.reused += 1
            return unit
        unit = await make()
        # JSON round trip now, so a unit made in this run and one loaded by a resumed run are identical.
        unit = Unit(**json.loads(json.dumps(dataclasses.asdict(unit), ensure_ascii=False)))
        unit.failures = [Failure(**failure) for failure in unit.failures]  # type: ignore[arg-type]
        self.save(kind, name, fingerprint, unit)
        self.made += 1
        return unit


def run_fingerprint(config: DataGenerationConfig, pool: InstructionPool, llm: ChatBackend, target: ChatBackend,
                    written: WrittenExamples | None = None) -> str:
    content = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NON_CONTENT_FIELDS}
    return content_hash({"config": content, "templates": template_versions(), "pool": pool.fingerprint(),
                         "llm": llm.model_name, "target": target.model_name,
                         "written": None if written is None else written.fingerprint()})


def load_written(config: DataGenerationConfig, concepts: Sequence[Concept]) -> WrittenExamples | None:
    """The config's written examples, checked against the concepts and sizes before any work starts."""
    if config.examples_path is None:
        return None
    written = WrittenExamples(config.examples_path)
    written.check(concepts, {("train", "positive"): config.positives_per_concept,
                             ("latent", "positive"): config.latent_num_of_examples,
                             ("latent", "negative"): config.latent_num_of_examples})
    return written


async def _genre_unit(ctx: Context, concept: Concept) -> Unit:
    if concept.genres:  # the concept file names its genres (AxBench metadata.jsonl): nothing to ask
        return Unit(data={"genres": list(concept.genres)},
                    counts={"genre": {"requested": 1, "produced": 1, "failed": 0, "given": 1}})
    genres, fallback = await determine_genre(ctx.llm, concept, ctx.config.seed, ctx.config.temperature)
    unit = Unit(data={"genres": list(genres)},
                counts={"genre": {"requested": 1, "produced": 1, "failed": 0, "parse_rule_fallback": int(bool(fallback))}})
    if fallback:
        unit.failures.append(Failure("genre", concept.concept_id, "genre", fallback, 1, ""))
    return unit


async def _contrast_unit(ctx: Context, concept: Concept) -> Unit:
    result = await contrast_concepts(ctx.llm, concept, seed=ctx.config.seed, temperature=ctx.config.temperature,
                                     max_words=ctx.config.max_related_words, max_reasks=ctx.config.max_reasks)
    counts = {"words": len(result.words), "meanings_dropped": result.dropped_meanings,
              "rejected_as_related": result.rejected, "kept": len(result.pairs), "reasked": result.reasks,
              "failed": len(result.failures)}
    return Unit(counts={"contrast": counts}, failures=result.failures,
                data={"pairs": [list(pair) for pair in result.pairs]})


async def run_generation(
    concepts: Sequence[Concept],
    config: DataGenerationConfig,
    *,
    llm: ChatBackend,
    target: ChatBackend,
    work_dir: str | Path,
    truncate: Truncate | None = None,
    pool: InstructionPool | None = None,
) -> tuple[dict[str, pd.DataFrame], list[Concept], dict[str, Any]]:
    """Make (or load) every unit and assemble the splits; returns (frames by split, concepts with their
    genres, the report without file paths). `llm` writes concept responses; `target` is the target
    model's chat backend (its own greedy answers); `truncate(text, n)` cuts LLM responses to n tokens of
    the target tokenizer."""
    started = time.perf_counter()
    if not concepts:
        raise InputError("No concepts to generate data for; check the concept file and max_concepts.")
    written = load_written(config, concepts)
    pool = pool or load_pool(config.pool_sources(), config.pool_size)
    ctx = Context(config, pool, llm, target, truncate, written)
    store = UnitStore(Path(work_dir), run_fingerprint(config, pool, llm, target, written))
    splits = set(config.splits)
    if splits & {"steering", "suppression"}:  # before any LLM call, not when the first concept gets there
        check_steering_pool(pool.general, pool.sources["general"], config.steering_num_of_examples)
    semaphore = asyncio.Semaphore(config.concept_concurrency)
    bar = tqdm(total=len(concepts), desc="concepts", unit="concept")

    async def per_concept(concept: Concept) -> dict[str, Unit]:
        async with semaphore:
            units = {"genre": await store.get("genre", concept.concept_id, concept,
                                              lambda: _genre_unit(ctx, concept))}
            genre = units["genre"].data["genres"][0]
            jobs: dict[str, Awaitable[Unit]] = {}
            if "train" in splits:
                jobs["train"] = store.get("train", concept.concept_id, concept,
                                          lambda: train_positives(ctx, concept, genre))
            if "latent" in splits:
                jobs["latent"] = _latent(concept, genre)
            if "steering" in splits:
                jobs["steering"] = store.get("steering", concept.concept_id, concept,
                                             lambda: steering_rows(ctx, concept))
            if "suppression" in splits:
                jobs["suppression"] = store.get("suppression", concept.concept_id, concept,
                                                lambda: suppression_rows(ctx, concept))
            if "attack_shots" in splits:
                jobs["attack_shots"] = store.get("attack_shots", concept.concept_id, concept,
                                                 lambda: attack_shot_rows(ctx, concept))
            units.update(zip(jobs, await asyncio.gather(*jobs.values())))
            if "attack_shots" in units:
                units["attack_shots"] = with_train_positives(
                    units["attack_shots"], units["train"].rows if "train" in units else [], concept,
                    config.attack_shots)
            if "preference" in splits:
                positives = units["train"].rows
                units["preference"] = await store.get("preference", concept.concept_id, concept,
                                                      lambda: preference_pairs(ctx, concept, positives))
        bar.update(1)
        return units

    async def _latent(concept: Concept, genre: str) -> Unit:
        written_unit = written_latent_rows(ctx, concept, genre)
        if written_unit is not None:
            return written_unit
        pairs: list[tuple[str, str]] = []
        if config.contrast_concepts:
            contrast = await store.get("contrast", concept.concept_id, concept, lambda: _contrast_unit(ctx, concept))
            pairs = [tuple(pair) for pair in contrast.data["pairs"]]
        unit = await store.get("latent", concept.concept_id, concept, lambda: latent_rows(ctx, concept, genre, pairs))
        if config.contrast_concepts:
            unit.counts = {**contrast.counts, **unit.counts}
            unit.failures = contrast.failures + unit.failures
        return unit

    negatives_job = asyncio.gather(*(store.get("shared_negatives", genre, None, lambda g=genre: shared_negatives(ctx, g))
                                     for genre in GENRES)) if "train" in splits else None
    try:
        per_concept_units = await asyncio.gather(*(per_concept(concept) for concept in concepts))
        negative_units = await negatives_job if negatives_job is not None else []
    finally:
        bar.close()

    frames, notes = _assemble(config, negative_units, per_concept_units)
    with_genres = [dataclasses.replace(concept, genres=tuple(units["genre"].data["genres"]))
                   for concept, units in zip(concepts, per_concept_units)]
    all_units = list(negative_units) + [unit for units in per_concept_units for unit in units.values()]
    failures = [failure.as_dict() for unit in all_units for failure in unit.failures]
    text_of = {concept.concept_id: concept.concept for concept in concepts}
    for failure in failures:
        failure["concept"] = text_of.get(failure["concept_id"])
    entries = list(getattr(getattr(llm, "ledger", None), "entries", []))
    report = {
        "generator_model": llm.model_name,
        "target_model": target.model_name,
        "concepts": len(concepts),
        "genres": {genre: sum(c.genre == genre for c in with_genres) for genre in GENRES},
        "rows": {split: len(frame) for split, frame in frames.items()},
        "steps": sum_counts(unit.counts for unit in all_units),
        "failures": failures,
        "notes": notes + [note for unit in all_units for note in unit.notes],
        "units": {"made": store.made, "reused": store.reused},
        "templates": template_versions(),
        "instruction_pool": {**pool.sources, "fingerprint": pool.fingerprint()},
        "config": dataclasses.asdict(config),
        "ledger": ledger_summary(entries, llm.model_name),
        "target_ledger": ledger_summary(entries, target.model_name),
        "cost_projection": cost_projection(entries, llm.model_name, max_tokens=config.llm_max_tokens),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return frames, with_genres, report


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in _NULLABLE_INTS:
        if column in frame.columns:
            frame[column] = frame[column].astype("Int64")
    return frame


def _empty_frame(split: str) -> pd.DataFrame:
    """A split with no rows still has its schema's columns and dtypes (so it validates and round-trips)."""
    dtypes = {"string": "object", "int64": "int64"}
    return pd.DataFrame({column.name: pd.Series([], dtype="Int64" if column.nullable and column.dtype == "int64"
                                                 else dtypes.get(column.dtype, "object"))
                         for column in schema_columns(split)})


def _assemble(config: DataGenerationConfig, negative_units: Sequence[Unit], per_concept: Sequence[dict[str, Unit]]
              ) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Rows in a fixed order — shared negatives by genre, then concepts in the given order — whatever
    order the units finished in."""
    notes: list[str] = []
    frames: dict[str, pd.DataFrame] = {}
    for split in ("train", "latent", "steering", "preference", "suppression", "attack_shots"):
        if split not in config.splits:
            continue
        rows = [row for unit in negative_units for row in unit.rows] if split == "train" else []
        rows += [row for units in per_concept for row in units[split].rows]
        frames[split] = _frame(rows) if rows else _empty_frame(split)
        if not rows:
            notes.append(f"{split}: no rows were generated (every request for it failed or was filtered out); "
                         f"the split is written empty, and methods that train on it will say so")
    if "latent_imbalance" in config.splits:
        frames["latent_imbalance"], note = _imbalance_pool(config, frames["latent"])
        notes += [note] if note else []
    return frames, notes


def _imbalance_pool(config: DataGenerationConfig, latent: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """One negative pool shared by all concepts: `latent_num_of_examples × imbalance_factor` rows drawn
    (seeded) from every concept's detection-eval negatives, relabelled as carrying no concept."""
    wanted = config.latent_num_of_examples * config.imbalance_factor
    negatives = latent[latent["category"] == "negative"] if len(latent) else latent
    note = None
    if len(negatives) < wanted:
        note = (f"latent_imbalance: {wanted} negatives wanted (latent_num_of_examples × imbalance_factor) but the "
                f"latent split has {len(negatives)}; all of them are used (generate more concepts for the full pool)")
    pool = negatives.sample(n=min(wanted, len(negatives)), random_state=config.seed).reset_index(drop=True)
    pool = pool.assign(output_concept=EMPTY_CONCEPT, concept_id=SHARED_NEGATIVE_ID, sae_link=None,
                       sae_id=pd.array([None] * len(pool), dtype="Int64"))
    return pool, note


def write_dataset(frames: dict[str, pd.DataFrame], concepts: Sequence[Concept], report: dict[str, Any], *,
                  out_dir: str | Path, dataset_config: str, report_path: str | Path,
                  provenance: dict[str, Any] | None = None) -> GenerationResult:
    """Validate and write every split, the concepts (with genres), the provenance (for the card) and the report."""
    for split, frame in frames.items():
        write_split(table_from_frame(frame, split, source=f"generated {split}"), out_dir, dataset_config, split)
    write_concepts(list(concepts), out_dir, dataset_config)
    if provenance is not None:
        recorded = read_provenance(out_dir)
        recorded.setdefault("generation", {})[dataset_config] = provenance
        write_provenance(recorded, out_dir)
    report = {"dataset_config": dataset_config, "out_dir": str(out_dir), **report}
    atomic_write_json(report_path, report)
    return GenerationResult(Path(out_dir), dataset_config, report["rows"], Path(report_path), report)


async def generate_dataset(
    concepts: Sequence[Concept],
    config: DataGenerationConfig,
    *,
    llm: ChatBackend,
    target: ChatBackend,
    out_dir: str | Path,
    dataset_config: str,
    work_dir: str | Path,
    report_path: str | Path | None = None,
    truncate: Truncate | None = None,
    pool: InstructionPool | None = None,
) -> GenerationResult:
    """`run_generation`, then `write_dataset` into `<out_dir>/<dataset_config>/`; the report goes to
    `report_path` (default: `<work_dir>/generation_report.json`)."""
    frames, with_genres, report = await run_generation(concepts, config, llm=llm, target=target,
                                                       work_dir=work_dir, truncate=truncate, pool=pool)
    provenance = {
        "generator_model": llm.model_name,
        "target_model": target.model_name,
        "template_hashes": template_versions(),
        "seed": config.seed,
        "cost_usd": report["ledger"]["total"]["cost_usd"],
        "training_usd_per_concept_at_gpt_4o_mini": report["cost_projection"]["training_usd_per_concept"],
    }
    return write_dataset(frames, with_genres, report, out_dir=out_dir, dataset_config=dataset_config,
                         report_path=report_path or Path(work_dir) / REPORT_FILE, provenance=provenance)
