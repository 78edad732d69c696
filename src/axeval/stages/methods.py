"""Stages `train`, `latent` and `steering`: dictionaries from the train split, then inference with them."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from axdata.io import atomic_path
from axeval.pipeline import RunContext, Stage
from axeval.stages.dataset import run_dataset
from axmethods.dictionary import SteeringDictionary
from axmethods.inference.latent import calibrate, check_dictionary, detector_kind, latent_inference
from axmethods.inference.sampling import SamplingConfig
from axmethods.inference.steering import UnsteeredBaseline, can_steer, run_steering, steerer_for
from axmethods.activations import ActivationCollector
from axmethods.methods import get_method
from axmethods.methods.base import ActivationMethod

logger = logging.getLogger(__name__)


def method_names(ctx: RunContext) -> list[str]:
    return [get_method(name).name for name in ctx.config.methods.train]


def dictionary_dir(ctx: RunContext, method: str) -> Path:
    return ctx.run_dir.dictionaries_dir / method


def load_dictionaries(ctx: RunContext) -> list[SteeringDictionary]:
    target = ctx.target_model()
    dictionaries = [SteeringDictionary.load(dictionary_dir(ctx, name), layer=ctx.config.run.layer)
                    for name in method_names(ctx)]
    for dictionary in dictionaries:
        check_dictionary(dictionary, target)  # a text detector's (BoW) weight spans its vocabulary, not d
    return dictionaries


class TrainStage(Stage):
    name = "train"
    description = "fit every configured method on the train split into a steering dictionary"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        dataset = run_dataset(ctx)
        return {"methods": dataclasses.asdict(ctx.config.methods), "model": ctx.config.section_hash("model"),
                "layer": ctx.config.run.layer, "llm": ctx.config.section_hash("llm"),
                "data": dataset.fingerprint("train")}

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [dictionary_dir(ctx, name) / f"l{ctx.config.run.layer}" / "weights.safetensors"
                for name in method_names(ctx)]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        dataset = run_dataset(ctx)
        train, concepts = dataset.split("train"), dataset.concepts()
        target, layer = ctx.target_model(), ctx.config.run.layer
        summary = {}
        # Activation methods with the same read-out settings share one collector, so the shared negatives
        # go through the model once per run, not once per method.
        collectors: dict[tuple[Any, ...], ActivationCollector] = {}
        for name in ctx.config.methods.train:
            method_class = get_method(name)
            settings = ctx.config.methods.settings.get(name) or ctx.config.methods.settings.get(method_class.name) or {}
            kwargs = {"backend": ctx.llm()} if method_class.name == "prompt-steering" else {}
            method = method_class(settings, **kwargs)
            logger.info("training %s on %d concepts", method_class.name, len(concepts))
            if isinstance(method, ActivationMethod):
                cfg = method.config
                key = (cfg.activation_batch_size, cfg.activation_dtype, cfg.max_length)
                if key not in collectors:
                    collectors[key] = method.collector(target, layer)
                dictionary = method.fit(target, train, concepts, layer, collector=collectors[key])
            else:
                dictionary = method.fit(target, train, concepts, layer)
            dictionary.save(dictionary_dir(ctx, method_class.name), datasets=[str(dataset.directory)])
            summary[method_class.name] = {"concepts": dictionary.n_concepts}
        return summary


class LatentStage(Stage):
    name = "latent"
    description = "score the detection splits with every dictionary in one pass; calibrate steering magnitudes"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        return {"train": ctx.stamp_hash("train"), "batch": ctx.config.inference.latent_batch_size,
                "data": run_dataset(ctx).fingerprint("latent", "latent_imbalance")}

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.run_dir.inference_dir / "latent.parquet"]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        dataset = run_dataset(ctx)
        target = ctx.target_model()
        dictionaries = load_dictionaries(ctx)
        # Every method goes in: latent_inference routes each to its detector and skips steering-only ones.
        latent = dataset.split("latent")
        batch = ctx.config.inference.latent_batch_size
        scores = latent_inference(target, dictionaries, latent, batch_size=batch)
        _write(scores, ctx.run_dir.inference_dir / "latent.parquet")
        detectors = [d for d in dictionaries if detector_kind(d) != "none"]
        for dictionary in dictionaries:
            if detector_kind(dictionary) == "residual":  # only residual read-outs calibrate a steering magnitude
                calibrated = calibrate(dictionary, scores)
                calibrated.save(dictionary_dir(ctx, dictionary.method), datasets=[str(dataset.directory)])
        summary: dict[str, Any] = {"rows": len(scores), "methods": [d.method for d in detectors]}
        if any(scores.attrs.get("nan_scores", {}).values()):
            summary["nan_scores"] = scores.attrs["nan_scores"]
        if dataset.has_split("latent_imbalance"):
            pool = dataset.split("latent_imbalance")
            pool = pool[pool["category"] == "negative"]
            imbalance = latent_inference(target, dictionaries, latent, mode="latent_imbalance", imbalance_pool=pool,
                                         batch_size=batch)
            _write(imbalance, ctx.run_dir.inference_dir / "latent_imbalance.parquet")
            summary["imbalance_rows"] = len(imbalance)
        return summary


class SteeringStage(Stage):
    name = "steering"
    description = "generate every (concept, prompt, factor) row with each method's intervention"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        return {"latent": ctx.stamp_hash("latent"), "inference": dataclasses.asdict(ctx.config.inference),
                "seed": ctx.config.run.seed, "data": run_dataset(ctx).fingerprint("steering")}

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.run_dir.inference_dir / "steering.parquet"]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        settings = ctx.config.inference
        target = ctx.target_model()
        prompts = run_dataset(ctx).split("steering")
        steerers = []
        for dictionary in load_dictionaries(ctx):
            if not can_steer(dictionary):
                logger.info("%s is detection-only (steering = none): skipped in the steering stage", dictionary.method)
                continue
            steerers.append(steerer_for(dictionary, kind=settings.intervention, positions=settings.positions))
        if settings.unsteered_baseline:
            steerers.append(UnsteeredBaseline())
        sampling = SamplingConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                  top_p=settings.top_p)
        frames = [
            run_steering(target, steerer, prompts, ctx.run_dir.inference_dir / "steering" / f"{steerer.method}.parquet",
                         factors=settings.factors, sampling=sampling, batch_size=settings.steering_batch_size,
                         seed=ctx.config.run.seed)
            for steerer in steerers
        ]
        generations = pd.concat(frames, ignore_index=True)
        _write(generations, ctx.run_dir.inference_dir / "steering.parquet")
        return {"generations": len(generations),
                "per_method": generations.groupby("method").size().to_dict()}


def _write(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
