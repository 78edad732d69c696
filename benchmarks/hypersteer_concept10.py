"""HyperSteer on the real Concept10 data with SmolLM2-135M-Instruct: does it steer? (issues 13 and 28).

One hypernetwork (2 blocks, layer 10, the paper's LM objective, `HyperSteerConfig`'s default learning rate) is
trained on 8 of Concept10's concepts for a wall-clock budget (`--max-minutes`: a `TrainerCallback` stops the
Trainer when it is spent); 2 concepts are held out. Every concept is then steered with
- `hypersteer/prompt`: Δ from each prompt (the paper's protocol, `HyperSteerResult.steerer`),
- `hypersteer/dict`:   the prompt-averaged dictionary (`axbench dictionary from-hypernet`),
- `diffmean`:          per-concept DiffMean vectors fitted on every concept (held-out ones included: the
                       per-concept baseline needs each concept's data, which is the point of the comparison),
and left unsteered. The score is the lexical concept score of the pipeline (`axeval.lexical`: the share (%) of a
generation's words among the concept's 30 signature words from the train split), greedy, on instructions of our
shipped pool never seen in training; each method's factor is picked per concept on the first half of them and
reported on the second half, as AxBench picks factors on one half and scores the other. Intervals: the seeded
95% percentile bootstrap of `axeval.stats` over the report-half generations (each at its concept's picked factor),
and the same over each generation's paired difference from the unsteered generation of the same concept and
prompt. Needs ../shared; writes benchmarks/results/hypersteer_concept10.json.

    nice -n 19 python benchmarks/hypersteer_concept10.py --max-minutes 38 --prompts 6   # the recorded run
    AXBENCH_RECORDS_DIR=/tmp/x python benchmarks/hypersteer_concept10.py --max-minutes 1 --prompts 2  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
from concept10_data import load_concept10
from records import Load, record_option, write_record
from transformers import TrainerCallback

from axeval.lexical import concept_signatures, lexical_score
from axeval.stats import bootstrap_ci
from axmethods.inference.latent import calibrate, latent_inference
from axmethods.inference.sampling import SamplingConfig, sample
from axmethods.interventions import steer
from axmethods.models import load_target_model
from axmethods.registry import get_method
from axmethods.trainers.data import positives_frame
from axmethods.trainers.hypersteer import HyperSteerConfig, HyperSteerTrainer

HYPERSTEER_FACTORS = (0.6, 1.2, 1.8)  # a subset of the grid 0.0..1.8, for CPU time
DIFFMEAN_FACTORS = (2.0, 4.0, 8.0)  # × the concept's calibration (max latent activation)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TimeBudget(TrainerCallback):
    """Stops training once `seconds` of wall-clock time have passed since training began (the Trainer's own
    stopping mechanism, so the optimiser step in flight completes and the state stays consistent)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = 0.0
        self.spent = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step % 10 == 0:
            log(f"step {state.global_step}, epoch {state.epoch:.2f}, {time.perf_counter() - self.started:.0f} s")
        if time.perf_counter() - self.started >= self.seconds:
            self.spent = True
            control.should_training_stop = True


def interval(values: np.ndarray) -> dict[str, float | int]:
    """Mean and 95% bootstrap interval (axeval.stats, seed 0) of `values`, rounded for the record."""
    return {key: round(value, 3) if isinstance(value, float) else value
            for key, value in bootstrap_ci(values).as_dict().items()}


GROUPS = {"seen": "seen", "seen_minus_unsteered": "seen − unsteered", "held_out": "held-out",
          "held_out_minus_unsteered": "held-out − unsteered"}  # record key → printed column
FACTORS = "factors picked (concepts in order)"


def table_row(method: str, factors: list[float], cis: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One printed row as the record keeps it: each group's mean and its [low, high] 95% interval."""
    row: dict[str, Any] = {"method": method, FACTORS: factors}
    for key, label in GROUPS.items():
        row[label] = cis[key]["mean"]
        row[f"{label} 95% CI"] = [cis[key]["ci_low"], cis[key]["ci_high"]]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--held-out", default="8,9", help="Concept ids training never sees.")
    parser.add_argument("--max-minutes", type=float, default=38.0, help="Training's wall-clock budget; training "
                        "stops when it is spent or after --epochs, whichever comes first.")
    parser.add_argument("--max-steps", type=int, default=-1, help="Optional step cap (-1: none).")
    parser.add_argument("--epochs", type=float, default=HyperSteerConfig.num_train_epochs,
                        help="Epochs the linear learning-rate schedule spans (HyperSteerConfig's default).")
    parser.add_argument("--batch-size", type=int, default=8, help="Examples per step (paper: 12).")
    parser.add_argument("--learning-rate", type=float, default=HyperSteerConfig.learning_rate,
                        help="AdamW learning rate (default: HyperSteerConfig's, the paper's).")
    parser.add_argument("--examples", type=int, default=24, help="Train positives per concept (and shared "
                        "negatives per genre for DiffMean) used; Concept10 has 72.")
    parser.add_argument("--num-hidden-layers", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=6, help="Evaluation instructions (half select, half report).")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    record_option(parser, "hypersteer_concept10")
    args = parser.parse_args()
    if args.prompts < 2 or args.max_minutes <= 0:
        raise SystemExit("--prompts must be at least 2 (half select, half report) and --max-minutes positive.")
    load = Load.now()
    wall = time.perf_counter()
    data = load_concept10()
    concepts = data.concepts
    train = data.train.groupby(["concept_id", "category", "concept_genre"], group_keys=False).head(
        args.examples)
    held_out = [int(x) for x in args.held_out.split(",")]
    target = load_target_model("smollm2-135m-instruct", device="cpu", dtype="auto")

    settings = HyperSteerConfig(layer=args.layer, num_hidden_layers=args.num_hidden_layers, max_steps=args.max_steps,
                                num_train_epochs=args.epochs, learning_rate=args.learning_rate,
                                held_out_concepts=held_out, max_response_length=32, max_prompt_length=64,
                                per_device_train_batch_size=args.batch_size, disable_tqdm=True, logging_steps=10,
                                seed=0)
    budget = TimeBudget(args.max_minutes * 60)
    started = time.perf_counter()
    seen = [c for c in concepts if c.concept_id not in held_out]
    trainer = HyperSteerTrainer(target, settings, positives_frame(train, seen), concepts, callbacks=[budget])
    trainer.train()
    hypernet = trainer.export()
    train_seconds = time.perf_counter() - started
    history = trainer.loss_history
    training = {"steps": trainer.state.global_step, "epochs": round(float(trainer.state.epoch or 0.0), 3),
                "stopped_by_time_budget": budget.spent, "examples": len(trainer.train_dataset),
                "loss_first": round(history[0], 4), "loss_last": round(history[-1], 4),
                "loss_first_10_mean": round(float(np.mean(history[:10])), 4),
                "loss_last_10_mean": round(float(np.mean(history[-10:])), 4),
                "learning_rate_at_stop": float(trainer.lr_scheduler.get_last_lr()[0]), "seconds": round(train_seconds)}
    log(f"trained in {train_seconds:.0f} s: {training}")
    started = time.perf_counter()
    averaged = hypernet.to_dictionary(concepts, target)
    dictionary_seconds = time.perf_counter() - started

    started = time.perf_counter()
    spec = get_method("diffmean")
    diffmean = spec.train(target, lambda split: train if split == "train" else None, concepts, args.layer,
                          spec.settings({"max_length": 96}))
    latent = data.latent
    latent = latent.groupby("concept_id", group_keys=False).head(12)
    diffmean = calibrate(diffmean, latent_inference(target, [diffmean], latent, progress=False))
    diffmean_seconds = time.perf_counter() - started
    log(f"DiffMean fitted and calibrated in {diffmean_seconds:.0f} s")
    # What factor 1 adds to the residual stream, on average over concepts (a Δ far smaller than DiffMean's
    # calibrated vector cannot steer at HyperSteer's factors 0..1.8).
    unit_norms = {name: round(float((d.steering_vectors.norm(dim=1) * d.calibration).mean()), 3)
                  for name, d in (("hypersteer/dict", averaged), ("diffmean", diffmean))}
    log(f"mean norm added at factor 1: {unit_norms}")

    pool = resources.files("axdata") / "resources" / "instructions" / "general.jsonl"
    instructions = [json.loads(line)["input"] for line in pool.read_text().splitlines()[:args.prompts]]
    assert not set(instructions) & set(train["input"])  # never seen in training
    templated = [target.format_prompt(text) for text in instructions]
    ids = [c.concept_id for c in concepts]
    rows = pd.DataFrame([(cid, c.concept, p, text) for cid, c in zip(ids, concepts)
                         for p, text in enumerate(templated)], columns=["concept_id", "concept", "prompt_id", "prompt"])
    encoded = [target.encode(text) for text in rows["prompt"]]
    greedy = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0.0)
    signatures = concept_signatures(train)

    def score(texts: list[str]) -> np.ndarray:
        return np.array([lexical_score(text, signatures[cid]) for text, cid in zip(texts, rows["concept_id"])])

    def generate(name: str, context_for_factor) -> np.ndarray:
        log(f"generating: {name}")
        with context_for_factor:
            tokens = sample(target, encoded, [0] * len(encoded), greedy)
        return score(target.tokenizer.batch_decode(tokens, skip_special_tokens=True))

    started = time.perf_counter()
    scores: dict[str, dict[float, np.ndarray]] = {"unsteered": {0.0: generate("unsteered", nullcontext())}}
    steerer = hypernet.steerer()
    scores["hypersteer/prompt"] = {f: generate(f"hypersteer/prompt {f}", steerer.intervene(
        target, rows.assign(factor=f))[0]) for f in HYPERSTEER_FACTORS}
    scores["hypersteer/dict"] = {f: generate(f"hypersteer/dict {f}", steer(
        target, averaged, rows["concept_id"].tolist(), [f] * len(rows))) for f in HYPERSTEER_FACTORS}
    scores["diffmean"] = {f: generate(f"diffmean {f}", steer(
        target, diffmean, rows["concept_id"].tolist(), [f] * len(rows))) for f in DIFFMEAN_FACTORS}
    generate_seconds = time.perf_counter() - started

    half = (rows["prompt_id"] < args.prompts // 2).to_numpy()
    is_held = rows["concept_id"].isin(held_out).to_numpy()
    base = scores["unsteered"][0.0]
    table: list[dict[str, Any]] = []  # the printed rows, as the record keeps them
    for method, by_factor in scores.items():
        picked: dict[int, float] = {}  # per concept: the factor best on the selection half
        report = np.empty(len(rows))  # each row's score at its concept's picked factor
        for cid in ids:
            mine = (rows["concept_id"] == cid).to_numpy()
            picked[cid] = max(by_factor, key=lambda f: by_factor[f][mine & half].mean())
            report[mine] = by_factor[picked[cid]][mine]
        cis = {}
        for group, where in (("seen", ~is_held & ~half), ("held_out", is_held & ~half)):
            cis[group] = interval(report[where])
            cis[f"{group}_minus_unsteered"] = interval(report[where] - base[where])
        table.append(table_row(method, list(picked.values()), cis))
    counts = {"seen": int((~is_held & ~half).sum()), "held_out": int((is_held & ~half).sum())}

    total_seconds = time.perf_counter() - wall
    print(f"\nHyperSteer on SmolLM2-135M-Instruct L{args.layer}: {len(seen)} concepts trained, held out {held_out}; "
          f"{training['steps']} steps = {training['epochs']} epochs of {training['examples']} examples (batch "
          f"{args.batch_size}, lr {args.learning_rate:g}, {args.num_hidden_layers} blocks) in {train_seconds:.0f} s; "
          f"loss {training['loss_first']} → {training['loss_last']} (mean of first/last 10 steps "
          f"{training['loss_first_10_mean']} → {training['loss_last_10_mean']}); prompt-averaged dictionary "
          f"{dictionary_seconds:.0f} s; DiffMean fit + calibration {diffmean_seconds:.0f} s; generation "
          f"{generate_seconds:.0f} s; total {total_seconds:.0f} s; mean norm added at factor 1 {unit_norms}")
    print(f"lexical concept score (%), mean [95% bootstrap CI] over the report-half generations "
          f"({counts['seen']} seen, {counts['held_out']} held-out), and the paired difference from unsteered")
    print("| method | factors picked (concepts in order) | " + " | ".join(GROUPS.values()) + " |")
    print("|---|---|" + "---|" * len(GROUPS))
    for row in table:
        cells = [f"{row[label]:.2f} [{row[label + ' 95% CI'][0]:.2f}, {row[label + ' 95% CI'][1]:.2f}]"
                 for label in GROUPS.values()]
        print(f"| {row['method']} | {', '.join(f'{f:g}' for f in row[FACTORS])} | " + " | ".join(cells) + " |")
    write_record(
        args.record, "lexical concept score (%) of HyperSteer (per-prompt Δ and prompt-averaged "
        "dictionary), DiffMean and the unsteered model on Concept10's seen and held-out concepts, mean and 95% "
        "bootstrap CI over report-half generations (and of the paired difference from unsteered)",
        {"model": "smollm2-135m-instruct", "layer": args.layer, "setting": data.setting, "held_out": held_out,
         "examples_per_concept": args.examples, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
         "num_hidden_layers": args.num_hidden_layers, "schedule_epochs": args.epochs,
         "max_minutes": args.max_minutes, "prompts": args.prompts, "report_prompts": args.prompts - args.prompts // 2,
         "max_new_tokens": args.max_new_tokens, "decoding": "greedy",
         "factor_grids": {"hypersteer": list(HYPERSTEER_FACTORS), "diffmean": list(DIFFMEAN_FACTORS)},
         "training": training, "norm_added_at_factor_1": unit_norms,
         "report_generations": counts, "rows": table,
         "seconds": {"train": round(train_seconds), "dictionary": round(dictionary_seconds),
                     "diffmean": round(diffmean_seconds), "generation": round(generate_seconds),
                     "total": round(total_seconds)}},
        how="nice -n 19 python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
