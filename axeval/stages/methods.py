"""Stages `train`, `latent` and `steering`: dictionaries from the train split, then inference with them."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from axdata.builders import concepts_path
from axdata.io import atomic_path
from axeval import protocol
from axeval.config import InferenceSection
from axeval.lexical import add_lexical_scores, concept_signatures
from axeval.modes import rule_scores
from axeval.pipeline import RunContext, Stage, join_counts
from axeval.stages.dataset import RunDataset, run_dataset
from axmethods.activations import ActivationCollector
from axmethods.dictionary import SteeringDictionary
from axmethods.distributed import is_main
from axmethods.inference.latent import calibrate, latent_inference, write_latent_inference
from axmethods.inference.sampling import SamplingConfig
from axmethods.inference.steering import (
    OUTPUT_COLUMNS,
    Steerer,
    UnsteeredBaseline,
    run_steering,
    steered_prompts,
)
from axmethods.models import TargetModel
from axmethods.registry import get_method
from axmethods.results import ConceptResult, DictionaryError, load_result

logger = logging.getLogger(__name__)


def method_names(ctx: RunContext) -> list[str]:
    return [get_method(name).name for name in ctx.config.methods.train]


def steered_methods(ctx: RunContext) -> set[str]:
    """The canonical names of methods.steer (all trained methods when it is not set)."""
    steer = ctx.config.methods.steer
    return set(method_names(ctx)) if steer is None else {get_method(name).name for name in steer}


def method_settings(ctx: RunContext, name: str) -> dict[str, Any]:
    settings = ctx.config.methods.settings
    canonical = get_method(name).name
    given = dict(settings.get(name) or settings.get(canonical) or {})
    return protocol.method_settings(ctx.config.run.protocol, canonical, given)


def dictionary_dir(ctx: RunContext, method: str) -> Path:
    return ctx.run_dir.dictionaries_dir / method


def artifact_marker(ctx: RunContext, name: str) -> Path:
    """The file a finished training of method `name` leaves: a dictionary's weights or an adapter folder's config."""
    if not get_method(name).in_layer_folder:  # folder results keep their config at the root
        return dictionary_dir(ctx, name) / "config.json"
    return dictionary_dir(ctx, name) / f"l{ctx.config.run.layer}" / "weights.safetensors"


def load_artifacts(ctx: RunContext) -> list[ConceptResult]:
    """Every method's trained result (`axmethods.results`), each checked against the target model."""
    target = ctx.target_model()
    artifacts = [load_result(dictionary_dir(ctx, name), layer=ctx.config.run.layer)
                 for name in method_names(ctx)]
    for artifact in artifacts:
        artifact.check_model(target)
    return artifacts


def score_latent(target: TargetModel, results: Sequence[ConceptResult], dataset: RunDataset, out: Path | None, *,
                 imbalance_out: Path | None = None, batch_size: int = 16, calibration_fallback: float | None = None,
                 calibrate_into: Sequence[Path | None] = (), score_decimals: int | None = None,
                 unrated_score: float | None = None) -> dict[str, Any]:
    """The latent stage (`axbench run`'s and `axbench infer latent`'s one implementation).

    Every detecting result scores the `latent` split in one pass (`out`), and — with `imbalance_out` — the shared
    negatives of the `latent_imbalance` split, written part by part (n_concepts × pool rows per method, never held
    whole). Residual dictionaries are then calibrated from the `latent` scores and saved into `calibrate_into[i]`
    (aligned with `results`; None = not written back, e.g. a Hub repo). A dictionary that cannot be calibrated
    (e.g. a probe that never fires) is left uncalibrated and named in the summary: it costs only its own steering.
    Under a distributed launcher every process scores its share and rank 0 writes. `score_decimals`: token scores
    rounded before max-pooling, as AxBench did (`protocol.latent_score_decimals`; None: not rounded);
    `unrated_score`: a target-model detector's answer without a rating (`protocol.unrated_detection_score`).
    """
    detectors = [result for result in results if result.detector]
    for result in results:
        if not result.detector:
            logger.info("%s has no detector (its %s steer only): skipped in latent inference", result.method,
                        result.KIND)
    summary: dict[str, Any] = {"rows": 0, "methods": [d.method for d in detectors], "imbalance_rows": 0}
    latent = dataset.split("latent")
    if out is not None:
        scores = latent_inference(target, detectors, latent, batch_size=batch_size, score_decimals=score_decimals,
                                  unrated_score=unrated_score)
        _write(scores, out)
        summary["rows"] = len(scores)
        if any(scores.attrs.get("nan_scores", {}).values()):
            summary["nan_scores"] = scores.attrs["nan_scores"]
        summary.update(_calibrate(results, scores, calibration_fallback, calibrate_into, dataset))
    if imbalance_out is not None:
        pool = dataset.split("latent_imbalance")
        pool = pool[pool["category"] == "negative"]
        written = write_latent_inference(imbalance_out if is_main() else None, target, detectors, latent,
                                         mode="latent_imbalance", imbalance_pool=pool, batch_size=batch_size,
                                         score_decimals=score_decimals, unrated_score=unrated_score)
        summary["imbalance_rows"] = written["rows"]
        if any(written["nan_scores"].values()):
            summary["imbalance_nan_scores"] = written["nan_scores"]
    return summary


def _calibrate(results: Sequence[ConceptResult], scores: pd.DataFrame, fallback: float | None,
               into: Sequence[Path | None], dataset: RunDataset) -> dict[str, Any]:
    """Calibrate every residual dictionary of `results` from `scores`; write each where `into` says."""
    calibrated, not_written, uncalibrated = [], [], {}
    for index, dictionary in enumerate(results):
        if not isinstance(dictionary, SteeringDictionary):
            continue  # only residual read-outs calibrate a steering magnitude
        try:
            result = calibrate(dictionary, scores, fallback=fallback)
        except DictionaryError as error:
            # One degenerate dictionary (e.g. a probe that never fires) must not cost the run the other
            # methods' calibrations and the imbalance scores: it stays detection-only, said loudly.
            logger.warning("%s is not calibrated and will not be steered: %s", dictionary.method, error)
            uncalibrated[dictionary.method] = str(error)
            continue
        if result is dictionary:
            continue  # its method sets the calibration (RePS family): nothing to write back
        destination = into[index] if index < len(into) else None
        if destination is None:
            not_written.append(dictionary.method)
        elif is_main():
            result.save_pretrained(destination, datasets=[str(dataset.directory)])
        calibrated.append(dictionary.method)
    summary: dict[str, Any] = {"calibrated": calibrated}
    if not_written:
        summary["calibration_not_written"] = not_written
    if uncalibrated:
        summary["uncalibrated"] = uncalibrated
    return summary


def plan_steerers(results: Sequence[ConceptResult], prompts: pd.DataFrame, settings: InferenceSection, *,
                  steer: set[str] | None = None, strict: bool = False) -> tuple[list[Steerer], dict[str, str]]:
    """The steerers of `results` under `settings` (intervention, positions), and why the others are not steered.

    Skipped: a result not in `steer` (canonical names; None = all), a detection-only result, an uncalibrated
    dictionary, a steerer for none of the prompts' concepts (e.g. sae-filtered). `strict` (one result a user asked
    to steer) raises the reason instead — before any model loads. An intervention a result lacks always raises.
    """
    steerers: list[Steerer] = []
    skipped: dict[str, str] = {}

    def skip(result: ConceptResult, error: DictionaryError, level: int) -> None:
        if strict:
            raise error
        logger.log(level, "%s", error)
        skipped[result.method] = str(error)

    for result in results:
        if steer is not None and get_method(result.method).name not in steer:
            skip(result, DictionaryError(f"{result.method} is not in methods.steer: detection only in this run"),
                 logging.INFO)
            continue
        if not result.steers:
            skip(result, DictionaryError(f"{result.method} is detection-only: skipped in the steering stage"),
                 logging.INFO)
            continue
        steerer = result.steerer(kind=settings.intervention, positions=settings.positions)
        if isinstance(result, SteeringDictionary) and result.needs_calibration:
            skip(result, DictionaryError(
                f"{result.method} has no calibration (per-concept max activation), so it is not steered: run latent "
                "inference first (`axbench infer latent`; in `axbench run` the latent stage could not calibrate it, "
                "see its warning)."), logging.WARNING)
            continue
        if steered_prompts(prompts, steerer).empty:  # e.g. sae-filtered: no concept has an output feature
            skip(result, DictionaryError(f"{result.method} steers none of the dataset's concepts; nothing to steer"),
                 logging.WARNING)
            continue
        steerers.append(steerer)
    return steerers, skipped


def generate_steering(target: TargetModel, steerers: Sequence[Steerer], dataset: RunDataset, out: Path, *,
                      settings: InferenceSection, seed: int) -> dict[str, Any]:
    """The steering stage (`axbench run`'s and `axbench infer steer`'s one implementation).

    Each steerer generates every (concept, prompt, factor) row of the `steering` split into `<out stem>/<method>
    .parquet` (resumable part files beside it), with its own factor grid where its method has one (RePS family)
    and `settings.factors` otherwise; then all rows, with the judge-free lexical concept score where the dataset
    has a train split (`axeval.lexical`), go to `out`. Under a distributed launcher rank 0 writes.
    """
    sampling = SamplingConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                              top_k=settings.top_k, top_p=settings.top_p)
    prompts = dataset.split("steering")
    per_method = out.with_suffix("")
    frames = [
        run_steering(target, steerer, prompts, per_method / f"{steerer.method}.parquet",
                     factors=getattr(steerer, "factors", None) or settings.factors, sampling=sampling,
                     batch_size=settings.steering_batch_size, engine=settings.engine, seed=seed)
        for steerer in steerers
    ]
    if not is_main():
        return {}  # rank 0 has every generation (run_steering gathers them) and writes the stage's output
    generations = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(OUTPUT_COLUMNS))
    if dataset.has_split("train"):  # the judge-free concept score, next to the judge's (axeval.lexical)
        generations = add_lexical_scores(generations, concept_signatures(dataset.split("train")))
    concepts = dataset.concepts() if concepts_path(dataset.directory, dataset.config).is_file() else []
    if any(c.concept_type == "rule" and c.checker for c in concepts):  # a program's score of rule following
        generations["rule_score"] = rule_scores(generations, concepts)
    _write(generations, out)
    return {"generations": len(generations), "per_method": generations.groupby("method").size().to_dict()}


class TrainStage(Stage):
    name = "train"
    description = "fit every configured method on the train split into a steering dictionary"
    distributed = True  # the Trainer's data parallelism / closed-form concepts split (MethodSpec.train)

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        dataset = run_dataset(ctx)
        return {"methods": dataclasses.asdict(ctx.config.methods), "protocol": ctx.config.run.protocol,
                "model": ctx.config.section_hash("model"),
                "layer": ctx.config.run.layer, "llm": ctx.config.section_hash("llm"),
                "data": dataset.fingerprint("train")}

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [artifact_marker(ctx, name) for name in method_names(ctx)]

    def describe(self, s: dict[str, Any]) -> str:
        return ", ".join(s) + f" ({max(v.get('concepts', 0) for v in s.values())} concepts)"

    def run(self, ctx: RunContext) -> dict[str, Any]:
        dataset = run_dataset(ctx)
        concepts, target, layer = dataset.concepts(), ctx.target_model(), ctx.config.run.layer
        summary = {}
        # Activation methods with the same read-out settings share one collector, so the shared negatives
        # go through the model once per run, not once per method.
        collectors: dict[tuple[Any, ...], ActivationCollector] = {}
        for name in ctx.config.methods.train:
            spec = get_method(name)
            settings = spec.settings(method_settings(ctx, name), layer=layer, where=f"methods.settings.{spec.name}")
            collector = None
            if spec.training == "activations":
                key = (settings.activation_batch_size, settings.activation_dtype, settings.max_length)
                if key not in collectors:
                    collectors[key] = spec.load()(settings).collector(target, layer)
                collector = collectors[key]
            if spec.training == "llm" and not is_main():
                continue  # LLM-written prompts: rank 0 asks the LLM (whose server scales it) and writes them
            logger.info("training %s on %d concepts", spec.name, len(concepts))
            result = spec.train(target, lambda split: dataset.split(split) if dataset.has_split(split) else None,
                                concepts, layer, settings, backend=ctx.llm() if spec.training == "llm" else None,
                                collector=collector)
            if is_main():
                result.save_pretrained(dictionary_dir(ctx, spec.name), datasets=[str(dataset.directory)])
            summary[spec.name] = {"concepts": result.n_concepts}
        return summary


class LatentStage(Stage):
    name = "latent"
    description = "score the detection splits with every dictionary in one pass; calibrate steering magnitudes"
    distributed = True  # texts split across processes (latent_inference); rank 0 writes

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        return {"train": ctx.stamp_hash("train"), "batch": ctx.config.inference.latent_batch_size,
                "protocol": ctx.config.run.protocol,
                "data": run_dataset(ctx).fingerprint("latent", "latent_imbalance")}

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.run_dir.inference_dir / "latent.parquet"]

    def describe(self, s: dict[str, Any]) -> str:
        line = f"{s['rows']} rows + {s['imbalance_rows']} imbalance rows scored by {', '.join(s['methods'])}"
        if s.get("uncalibrated"):
            line += f"; not calibrated, so not steered: {', '.join(s['uncalibrated'])}"
        return line

    def run(self, ctx: RunContext) -> dict[str, Any]:
        artifacts = load_artifacts(ctx)
        dataset = run_dataset(ctx)
        inference = ctx.run_dir.inference_dir
        return score_latent(
            ctx.target_model(), artifacts, dataset, inference / "latent.parquet",
            imbalance_out=inference / "latent_imbalance.parquet" if dataset.has_split("latent_imbalance") else None,
            batch_size=ctx.config.inference.latent_batch_size,
            calibration_fallback=protocol.calibration_fallback(ctx.config.run.protocol),
            calibrate_into=[dictionary_dir(ctx, artifact.method) for artifact in artifacts],
            score_decimals=protocol.latent_score_decimals(ctx.config.run.protocol),
            unrated_score=protocol.unrated_detection_score(ctx.config.run.protocol))


class SteeringStage(Stage):
    name = "steering"
    description = "generate every (concept, prompt, factor) row with each method's intervention"
    distributed = True  # batches split across processes (run_steering); rank 0 writes

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        return {"latent": ctx.stamp_hash("latent"), "inference": generation_settings(ctx),
                "seed": ctx.config.run.seed, "steer": ctx.config.methods.steer,
                "data": run_dataset(ctx).fingerprint("steering", "train")}

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.run_dir.inference_dir / "steering.parquet"]

    def describe(self, s: dict[str, Any]) -> str:
        return f"{s['generations']} generations: {join_counts(s['per_method'])}"

    def run(self, ctx: RunContext) -> dict[str, Any]:
        settings = ctx.config.inference
        dataset = run_dataset(ctx)
        prompts = dataset.split("steering")
        steerers, _ = plan_steerers(load_artifacts(ctx), prompts, settings, steer=steered_methods(ctx)
                                    if ctx.config.methods.steer is not None else None)
        if settings.unsteered_baseline:
            steerers.append(UnsteeredBaseline())
        return generate_steering(ctx.target_model(), steerers, dataset, ctx.run_dir.inference_dir / "steering.parquet",
                                 settings=settings, seed=ctx.config.run.seed)


def generation_settings(ctx: RunContext) -> dict[str, Any]:
    """The inference settings generations depend on (a generating stage's stamp): the engine changes the speed, not
    the generations, so switching it does not redo the stage."""
    return {k: v for k, v in dataclasses.asdict(ctx.config.inference).items() if k != "engine"}


def _write(frame: pd.DataFrame, path: Path) -> None:
    if not is_main():
        return  # under a distributed launcher every process holds the frame; rank 0 writes it
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
