"""Stage `suppression`: generate the suppression split's rows with every suppressing method, defence prompt and
attack (`axeval.modes`); the judge and the report score them as suppression (2 − concept).

One implementation (`generate_suppression`) for `axbench run`; each (steerer, attack) pair is one `run_steering`
call, so it is resumable part by part like the steering stage.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2.exceptions import TemplateError

from axdata.errors import InputError
from axeval.config import InferenceSection
from axeval.lexical import add_lexical_scores, concept_signatures
from axeval.modes import DefenceSteerer, EvaluationSection, attacked_prompts, check_defence_texts, rule_scores
from axeval.pipeline import RunContext, Stage, join_counts
from axeval.stages.dataset import RunDataset, run_dataset
from axeval.stages.evaluation import JudgeStage
from axeval.stages.methods import _write, generation_settings, load_artifacts, plan_steerers, steered_methods
from axmethods.distributed import is_main
from axmethods.inference.sampling import SamplingConfig
from axmethods.inference.steering import OUTPUT_COLUMNS, Steerer, UnsteeredBaseline, run_steering
from axmethods.models import TargetModel

logger = logging.getLogger(__name__)
ATTACK_COLUMNS = ("mode", "attack", "attack_n")
SUPPRESSION_JUDGEMENTS = "suppression_judgements.parquet"  # in the run's eval/ folder


def suppressing(steerers: Sequence[Steerer]) -> tuple[list[Steerer], dict[str, str]]:
    """The steerers that can suppress (those with a factor: they steer with −factor) and why the others cannot."""
    kept, skipped = [], {}
    for steerer in steerers:
        if steerer.factor_free:  # prompting, adapters, fine-tuned weights steer *towards* a concept only
            skipped[steerer.method] = (f"{steerer.method} steers without a factor, so it cannot be turned into "
                                       "suppression; its prompt counterpart is the defence prompt")
            logger.info("%s", skipped[steerer.method])
        else:
            kept.append(steerer)
    return kept, skipped


def check_system_turn(target: TargetModel, evaluation: EvaluationSection) -> None:
    """The `system` defences need a chat template with a system turn (Gemma-2's has none): refuse before work."""
    systems = [name for name in evaluation.defences if DefenceSteerer(name).placement == "system"]
    if not systems:
        return
    try:
        target.format_prompt("question", system="defence")
    except TemplateError as error:  # the template itself refuses a system role
        raise InputError(f"evaluation.defences has {systems} but the target model's chat template has no system turn "
                         f"({error}); drop them from evaluation.defences (the prepend and append placements still "
                         "run).") from None


def _file_name(method: str, attack: str, strength: int | None) -> str:
    variant = attack if strength is None else f"{attack}-{strength}"
    return re.sub(r"[^\w.-]+", "--", f"{method}__{variant}") + ".parquet"


def generate_suppression(target: TargetModel, steerers: Sequence[Steerer], dataset: RunDataset, out: Path, *,
                         settings: InferenceSection, evaluation: EvaluationSection, seed: int) -> dict[str, Any]:
    """The suppression stage: every suppressing steerer (at −factor), defence prompt and the unsteered model, on the
    suppression split under no attack and each configured attack, into `<out stem>/<method>__<attack>.parquet`
    parts and then `out` (with `mode`, `attack`, `attack_n`, the lexical concept score and, for rule concepts with a
    checker, `rule_score`)."""
    check_system_turn(target, evaluation)
    sampling = SamplingConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                              top_k=settings.top_k, top_p=settings.top_p)
    suppression = dataset.split("suppression")
    check_defence_texts(suppression, evaluation.defences, f"the dataset {dataset.directory} ({dataset.config})")
    concepts = dataset.concepts()
    types = {c.concept_id: c.concept_type for c in concepts}
    shots = dataset.split("attack_shots") if dataset.has_split("attack_shots") else None
    magnitudes = evaluation.suppression_factors or settings.factors
    per_method = out.with_suffix("")
    frames = []
    for attack, strength in evaluation.attacks:
        prompts = attacked_prompts(suppression, attack, strength, shots, types)
        for steerer in steerers:
            own = getattr(steerer, "factors", None)
            factors = [] if steerer.factor_free else [-abs(float(f)) for f in (own or magnitudes)]
            frame = run_steering(target, steerer, prompts, per_method / _file_name(steerer.method, attack, strength),
                                 factors=factors, sampling=sampling, batch_size=settings.steering_batch_size,
                                 engine=settings.engine, seed=seed)
            frames.append(frame.assign(mode="suppression", attack=attack,
                                       attack_n=np.nan if strength is None else float(strength)))
    if not is_main():
        return {}
    columns = [*OUTPUT_COLUMNS, *ATTACK_COLUMNS]
    generations = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    if dataset.has_split("train"):
        generations = add_lexical_scores(generations, concept_signatures(dataset.split("train")))
    if any(c.concept_type == "rule" and c.checker for c in concepts):
        generations["rule_score"] = rule_scores(generations, concepts)
    _write(generations, out)
    return {"generations": len(generations),
            "per_method": generations.groupby("method").size().to_dict(),
            "attacks": [a if n is None else f"{a}-{n}" for a, n in evaluation.attacks]}


class SuppressionStage(Stage):
    name = "suppression"
    description = "generate the suppression rows (methods at −factor, defence prompts, unsteered), with attacks"
    distributed = True  # batches split across processes (run_steering); rank 0 writes

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        return {"latent": ctx.stamp_hash("latent"), "inference": generation_settings(ctx),
                "evaluation": dataclasses.asdict(ctx.config.evaluation), "seed": ctx.config.run.seed,
                "steer": ctx.config.methods.steer,
                "data": run_dataset(ctx).fingerprint("suppression", "attack_shots", "train")}

    def outputs(self, ctx: RunContext) -> list[Path]:
        return [ctx.run_dir.inference_dir / "suppression.parquet"]

    def describe(self, s: dict[str, Any]) -> str:
        return f"{s['generations']} generations: {join_counts(s['per_method'])}"

    def run(self, ctx: RunContext) -> dict[str, Any]:
        dataset = run_dataset(ctx)
        if not dataset.has_split("suppression"):
            raise InputError(f"evaluation.modes has suppression but the dataset {dataset.directory} "
                             f"({dataset.config}) has no suppression split; add suppression (and attack_shots for "
                             "attacks) to data.splits, or generate them with `axbench data generate`.")
        settings, evaluation = ctx.config.inference, ctx.config.evaluation
        prompts = dataset.split("suppression")
        # before the model loads (generate_suppression checks again, for `axbench infer suppress`)
        check_defence_texts(prompts, evaluation.defences, f"the dataset {dataset.directory} ({dataset.config})")
        planned, _ = plan_steerers(load_artifacts(ctx), prompts, settings,
                                   steer=steered_methods(ctx) if ctx.config.methods.steer is not None else None)
        steerers, _ = suppressing(planned)
        steerers += [DefenceSteerer(name) for name in evaluation.defences]
        steerers.append(UnsteeredBaseline())
        return generate_suppression(ctx.target_model(), steerers, dataset,
                                    ctx.run_dir.inference_dir / "suppression.parquet", settings=settings,
                                    evaluation=evaluation, seed=ctx.config.run.seed)


class SuppressionJudgeStage(JudgeStage):
    name = "suppression-judge"
    description = "rate every suppression generation for concept, instruction and fluency with the LLM judge"
    source = "suppression"
    judgements = SUPPRESSION_JUDGEMENTS
