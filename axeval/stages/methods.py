"""Stages `train`, `latent` and `steering`: dictionaries from the train split, then inference with them."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from axdata.io import atomic_path
from axeval import protocol
from axeval.lexical import add_lexical_scores, concept_signatures
from axeval.pipeline import RunContext, Stage, join_counts
from axeval.stages.dataset import run_dataset
from axmethods.activations import ActivationCollector
from axmethods.dictionary import SteeringDictionary
from axmethods.distributed import is_main
from axmethods.inference.latent import calibrate, latent_inference, write_latent_inference
from axmethods.inference.sampling import SamplingConfig
from axmethods.inference.steering import UnsteeredBaseline, run_steering, steered_prompts
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
    if get_method(name).result != "dictionary":  # folder results keep their config at the root
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


def load_detectors(ctx: RunContext) -> list[ConceptResult]:
    """The results that detect (a class with a `detector`): what latent inference scores."""
    return [artifact for artifact in load_artifacts(ctx) if artifact.detector]


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
        dataset = run_dataset(ctx)
        target = ctx.target_model()
        dictionaries = load_detectors(ctx)
        latent = dataset.split("latent")
        batch = ctx.config.inference.latent_batch_size
        scores = latent_inference(target, dictionaries, latent, batch_size=batch)
        _write(scores, ctx.run_dir.inference_dir / "latent.parquet")
        detectors = [d for d in dictionaries if d.detector]
        uncalibrated: dict[str, str] = {}
        for dictionary in dictionaries:
            if isinstance(dictionary, SteeringDictionary):  # only residual read-outs calibrate a magnitude
                try:
                    calibrated = calibrate(dictionary, scores,
                                           fallback=protocol.calibration_fallback(ctx.config.run.protocol))
                except DictionaryError as error:
                    # One degenerate dictionary (e.g. a probe that never fires) must not cost the run the other
                    # methods' calibrations and the imbalance scores: it stays detection-only, said loudly.
                    logger.warning("%s is not calibrated and will not be steered: %s", dictionary.method, error)
                    uncalibrated[dictionary.method] = str(error)
                    continue
                if calibrated is not dictionary and is_main():
                    calibrated.save_pretrained(dictionary_dir(ctx, dictionary.method), datasets=[str(dataset.directory)])
        summary: dict[str, Any] = {"rows": len(scores), "methods": [d.method for d in detectors]}
        if uncalibrated:
            summary["uncalibrated"] = uncalibrated
        if any(scores.attrs.get("nan_scores", {}).values()):
            summary["nan_scores"] = scores.attrs["nan_scores"]
        if dataset.has_split("latent_imbalance"):
            pool = dataset.split("latent_imbalance")
            pool = pool[pool["category"] == "negative"]
            # n_concepts × pool rows per method (Concept500: 1.8M): written part by part, never held whole.
            path = ctx.run_dir.inference_dir / "latent_imbalance.parquet"
            imbalance = write_latent_inference(path if is_main() else None, target, dictionaries, latent,
                                               mode="latent_imbalance", imbalance_pool=pool, batch_size=batch)
            summary["imbalance_rows"] = imbalance["rows"]
        return summary


class SteeringStage(Stage):
    name = "steering"
    description = "generate every (concept, prompt, factor) row with each method's intervention"
    distributed = True  # batches split across processes (run_steering); rank 0 writes

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        # The engine changes the speed, not the generations: switching it does not redo the stage.
        inference = {k: v for k, v in dataclasses.asdict(ctx.config.inference).items() if k != "engine"}
        return {"latent": ctx.stamp_hash("latent"), "inference": inference,
                "seed": ctx.config.run.seed, "steer": ctx.config.methods.steer,
                "data": run_dataset(ctx).fingerprint("steering", "train")}

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.run_dir.inference_dir / "steering.parquet"]

    def describe(self, s: dict[str, Any]) -> str:
        return f"{s['generations']} generations: {join_counts(s['per_method'])}"

    def run(self, ctx: RunContext) -> dict[str, Any]:
        settings = ctx.config.inference
        target = ctx.target_model()
        prompts = run_dataset(ctx).split("steering")
        steerers = []
        steered = steered_methods(ctx) if ctx.config.methods.steer is not None else None
        for artifact in load_artifacts(ctx):
            if steered is not None and get_method(artifact.method).name not in steered:
                logger.info("%s is not in methods.steer: detection only in this run", artifact.method)
                continue
            if not artifact.steers:
                logger.info("%s is detection-only: skipped in the steering stage", artifact.method)
                continue
            if isinstance(artifact, SteeringDictionary) and artifact.needs_calibration:
                logger.warning("%s has no calibration (the latent stage could not calibrate it; see its warning): "
                               "not steered", artifact.method)
                continue
            steerer = artifact.steerer(kind=settings.intervention, positions=settings.positions)
            if steered_prompts(prompts, steerer).empty:  # e.g. sae-filtered: no concept has an output feature
                logger.warning("%s steers none of the run's concepts; nothing to steer", artifact.method)
                continue
            steerers.append(steerer)
        if settings.unsteered_baseline:
            steerers.append(UnsteeredBaseline())
        sampling = SamplingConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                  top_k=settings.top_k, top_p=settings.top_p)
        frames = [
            run_steering(target, steerer, prompts,
                         ctx.run_dir.inference_dir / "steering" / f"{steerer.method}.parquet",
                         factors=getattr(steerer, "factors", None) or settings.factors, sampling=sampling,
                         batch_size=settings.steering_batch_size, engine=settings.engine,
                         seed=ctx.config.run.seed)
            for steerer in steerers
        ]
        if not is_main():
            return {}  # rank 0 has every generation (run_steering gathers them) and writes the stage's output
        generations = pd.concat(frames, ignore_index=True)
        dataset = run_dataset(ctx)
        if dataset.has_split("train"):  # the judge-free concept score, next to the judge's (axeval.lexical)
            generations = add_lexical_scores(generations, concept_signatures(dataset.split("train")))
        _write(generations, ctx.run_dir.inference_dir / "steering.parquet")
        return {"generations": len(generations),
                "per_method": generations.groupby("method").size().to_dict()}


def _write(frame: pd.DataFrame, path: Path) -> None:
    if not is_main():
        return  # under a distributed launcher every process holds the frame; rank 0 writes it
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
