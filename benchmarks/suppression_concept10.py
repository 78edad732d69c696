"""Suppression and attacks on the real Concept10 data with SmolLM2-135M-Instruct, scored without a judge (issue 26).

Each Concept10 concept gets `--prompts` instructions of our shipped pool (never in its training data), each blended
with the concept by the fixed fallback template ("<instruction> In your answer, talk about <concept>.") — no LLM, so
the prompts are the same on every machine — and the fixed fallback defence prompt ("Do not mention <concept> …").
Many-shot examples are the concept's own Concept10 training pairs (instructions with answers that carry it); the
overwrite texts are `axeval.modes.OVERWRITE_TEXT`. The rows go through the suppression stage's function
(`axeval.stages.suppression.generate_suppression`): unsteered, the defence prompt in the system turn / before /
after the user's text, and DiffMean (fitted on the train split, calibrated on 12 latent rows per concept) steering
with −factor × calibration; greedy decoding. Score: the lexical concept score (% of the generation's words among the
concept's signature words from the train split; lower = better suppressed) and the perplexity under the unsteered
model (higher = less fluent), per method, factor and attack, averaged over concepts. Writes
benchmarks/results/suppression_concept10.json (`--record NAME`: another name). Needs ../shared.

`--methods diffmean,reps,reps-orig_add` adds RePS (the method whose own objective trains suppression: `orig_sub`
pairs under the null intervention) through the product's trainer (`get_method("reps").train`): each concept's
first `--reps-pairs` train positives win over SmolLM2's own greedy answers (32 tokens; `axbench train reps` makes
the same pairs, with 128 tokens, when a dataset has no preference split), rank-1 vector, 2 epochs, batch 6, lr 0.08,
seed 0 (the settings of tests/test_reps_concept10.py). `reps` trains both pair kinds (orig_add, orig_sub with null_it_out: the defaults);
`reps-orig_add` the same without orig_sub, to show what the suppression objective adds. Both steer at −factor over
`--reps-factors`, a slice of RePS's own grid (the suppression stage negates a RePS-family method's own grid), with
the raw factor (no calibration).

    python benchmarks/suppression_concept10.py                 # ~20 min on 2 CPU cores
    # + RePS (both pair kinds, and orig_add alone) on the science test's 4 concepts, beside the record:
    python benchmarks/suppression_concept10.py --concepts 0,6,8,9 --methods diffmean,reps,reps-orig_add --record NAME
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from concept10_data import DEFAULT_SETTING, SHARED
from records import Load, record_option, write_record

from axdata.builders import read_concepts, read_split, write_split
from axdata.builders.axbench_import import import_axbench
from axdata.concepts import Concept
from axdata.generation.templates import FALLBACK_BLEND, FALLBACK_DEFENCE
from axdata.schema import table_from_frame
from axeval.config import InferenceSection
from axeval.modes import DefenceSteerer, EvaluationSection
from axeval.stages.dataset import RunDataset
from axeval.stages.suppression import generate_suppression
from axmethods.dictionary import SteeringDictionary
from axmethods.inference.latent import calibrate, latent_inference
from axmethods.inference.steering import DictionarySteerer, UnsteeredBaseline
from axmethods.models import TargetModel, load_target_model
from axmethods.registry import get_method
from axmethods.trainers import preference_frame

# The suppressing methods `measure` can train: DiffMean, and RePS with both pair kinds or with orig_add alone.
METHODS = {"diffmean": None, "reps": ["orig_add", "orig_sub"], "reps-orig_add": ["orig_add"]}
# A slice of RePS's own steering grid (VECTOR_STEER_FACTORS, 2..50): the factors where a short RePS run on
# SmolLM2 steers towards a concept (benchmarks/reps_concept10.py), here negated.
REPS_FACTORS = (4.0, 8.0, 12.0, 20.0)


def train_reps(target: TargetModel, pairs: pd.DataFrame, concepts: list[Concept], layer: int, kinds: list[str],
               factors: Sequence[float], name: str) -> SteeringDictionary:
    """RePS through the registry (what `axbench train reps` runs) at tests/test_reps_concept10.py's settings; the
    dictionary is renamed `name` so its rows stand apart, and carries `factors` as its own grid."""
    spec = get_method("reps")
    settings = spec.settings({"num_train_epochs": 2, "per_device_train_batch_size": 6, "learning_rate": 0.08,
                              "max_response_length": 32, "logging_steps": 6, "disable_tqdm": True, "seed": 0,
                              "preference_pairs": kinds, "inference_factors": [float(f) for f in factors]},
                             layer=layer)
    result = spec.train(target, lambda split: pairs if split == "preference" else None, concepts, layer, settings)
    return dataclasses.replace(result, method=name)


def measure(*, layer: int = 10, prompts: int = 4, factors: list[float] | None = None,
            defences: list[str] | None = None, many_shot: list[int] | None = None, overwrite: list[str] | None = None,
            max_new_tokens: int = 32, examples: int = 24, concept_ids: list[int] | None = None,
            methods: Sequence[str] = ("diffmean",), reps_pairs: int = 36,
            reps_factors: Sequence[float] = REPS_FACTORS) -> dict:
    """Fit the `methods` (METHODS), generate every (method, factor, attack) and return the table (mean over
    concepts) and facts. `tests/test_suppression_science.py` runs a small slice of it."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods {','.join(methods)}: {unknown} unknown; use any of {', '.join(METHODS)}.")
    factors = [1.0, 2.0] if factors is None else factors
    defences = ["system", "prepend", "append"] if defences is None else defences
    many_shot = [4] if many_shot is None else many_shot
    overwrite = ["postfix"] if overwrite is None else overwrite
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="suppression-c10-"))
    import_axbench(SHARED / DEFAULT_SETTING, work, "c10")
    concepts, train = read_concepts(work, "c10"), read_split(work, "c10", "train")
    if concept_ids is not None:
        concepts = [c for c in concepts if c.concept_id in concept_ids]
    pool = resources.files("axdata") / "resources" / "instructions" / "general.jsonl"
    instructions = [json.loads(line)["input"] for line in pool.read_text().splitlines()[:prompts]]
    assert not set(instructions) & set(train["input"])  # never seen in training
    rows, shots = [], []
    for concept in concepts:
        for k, text in enumerate(instructions):
            rows.append({"dataset_name": "suppression", "concept_id": concept.concept_id,
                         "input_concept": concept.concept, "input_id": k, "original_prompt": text,
                         "blended_prompt": FALLBACK_BLEND.render(instruction=text, concept=concept.concept),
                         "half": "selection" if k < prompts // 2 else "heldout",
                         "defence_prompt": FALLBACK_DEFENCE.render(concept=concept.concept)})
        positives = train[(train["concept_id"] == concept.concept_id) & (train["category"] == "positive")]
        shots += [{"concept_id": concept.concept_id, "input_concept": concept.concept, "shot_id": i,
                   "question": row.input, "answer": row.output} for i, row in enumerate(positives.head(16).itertuples())]
    write_split(table_from_frame(pd.DataFrame(rows), "suppression"), work, "c10", "suppression")
    write_split(table_from_frame(pd.DataFrame(shots), "attack_shots"), work, "c10", "attack_shots")
    dataset = RunDataset(work, "c10")

    target = load_target_model("smollm2-135m-instruct", device="cpu", dtype="auto")
    ids = [c.concept_id for c in concepts]
    # The shared negatives (concept_id -1) stay: DiffMean's direction is positives' mean minus theirs.
    subset = train[train["concept_id"].isin([*ids, -1])].groupby(
        ["concept_id", "category", "concept_genre"], group_keys=False).head(examples)
    dictionaries, reps = [], {}
    if "diffmean" in methods:
        spec = get_method("diffmean")
        diffmean = spec.train(target, lambda split: subset if split == "train" else None, concepts, layer,
                              spec.settings({"max_length": 96}))
        latent = read_split(work, "c10", "latent")
        latent = latent[latent["concept_id"].isin(ids)].groupby("concept_id", group_keys=False).head(12)
        dictionaries.append(calibrate(diffmean, latent_inference(target, [diffmean], latent, progress=False)))
    reps_methods = [m for m in methods if METHODS[m]]
    if reps_methods:
        clock = time.perf_counter()
        positives = train[train["concept_id"].isin(ids) & (train["category"] == "positive")]
        pairs = preference_frame(target, positives.groupby("concept_id").head(reps_pairs), concepts,
                                 max_new_tokens=32, batch_size=36, progress=False)
        reps["pairs"], reps["pairs_seconds"] = len(pairs), round(time.perf_counter() - clock, 1)
        for name in reps_methods:
            clock = time.perf_counter()
            dictionaries.append(train_reps(target, pairs, concepts, layer, METHODS[name], reps_factors, name))
            print(f"{name}: trained in {time.perf_counter() - clock:.0f} s", file=sys.stderr)
            reps[name] = {"train_seconds": round(time.perf_counter() - clock, 1),
                          **dictionaries[-1].config["training_summary"]}
    fitted = time.perf_counter() - started

    settings = InferenceSection(factors=factors, max_new_tokens=max_new_tokens, temperature=0.0,
                                steering_batch_size=32)
    modes = ["suppression", "attacks"] if many_shot or overwrite else ["suppression"]
    evaluation = EvaluationSection(modes=modes, defences=defences, many_shot=many_shot, overwrite=overwrite)
    steerers = [*(DictionarySteerer(d) for d in dictionaries), *(DefenceSteerer(p) for p in evaluation.defences),
                UnsteeredBaseline()]
    generations = generate_suppression(target, steerers, dataset, work / "suppression.parquet", settings=settings,
                                       evaluation=evaluation, seed=0)
    frame = pd.read_parquet(work / "suppression.parquet")
    frame["variant"] = [a if pd.isna(n) else f"{a}-{int(n)}" for a, n in zip(frame["attack"], frame["attack_n"])]
    frame["factor"] = frame["factor"].fillna(0.0)
    table = (frame.groupby(["method", "factor", "variant", "concept_id"])[["lexical_score", "perplexity"]].mean()
             .groupby(level=["method", "factor", "variant"]).mean().reset_index())
    return {"table": table, "concepts": len(concepts), "generations": generations["generations"],
            "seconds": time.perf_counter() - started, "fit_seconds": fitted, "reps": reps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=4, help="instructions per concept (half select, half report)")
    parser.add_argument("--factors", default="1,2", help="suppression strengths: DiffMean steers with -factor")
    parser.add_argument("--many-shot", default="4", help="many-shot n grid")
    parser.add_argument("--overwrite", default="postfix", help="overwrite placements")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--examples", type=int, default=24, help="train positives per concept used by DiffMean")
    parser.add_argument("--concepts", default="", help="Concept10 concept ids (default: all 10)")
    parser.add_argument("--methods", default="diffmean", help=f"suppressing methods: any of {', '.join(METHODS)}")
    parser.add_argument("--reps-pairs", type=int, default=36, help="train positives per concept RePS pairs")
    parser.add_argument("--reps-factors", default=",".join(f"{f:g}" for f in REPS_FACTORS),
                        help="RePS suppression strengths: it steers with −factor (raw, no calibration)")
    record_option(parser, "suppression_concept10")
    args = parser.parse_args()
    load = Load.now()
    methods = [m for m in args.methods.split(",") if m]
    measured = measure(layer=args.layer, prompts=args.prompts, factors=[float(f) for f in args.factors.split(",")],
                       many_shot=[int(n) for n in args.many_shot.split(",") if n],
                       overwrite=[p for p in args.overwrite.split(",") if p], max_new_tokens=args.max_new_tokens,
                       examples=args.examples, concept_ids=[int(c) for c in args.concepts.split(",") if c] or None,
                       methods=methods, reps_pairs=args.reps_pairs,
                       reps_factors=[float(f) for f in args.reps_factors.split(",")])
    table, seconds = measured["table"], measured["seconds"]
    print(f"\nSmolLM2-135M-Instruct L{args.layer}, Concept10 {DEFAULT_SETTING}, {measured['concepts']} concepts × "
          f"{args.prompts} prompts, {measured['generations']} generations, {seconds:.0f} s "
          f"(fit {measured['fit_seconds']:.0f} s)")
    wide = table.pivot_table(index=["method", "factor"], columns="variant", values="lexical_score")
    print("lexical concept % (lower = concept kept out):\n" + wide.round(2).to_string())
    ppl = table.pivot_table(index=["method", "factor"], columns="variant", values="perplexity")
    print("perplexity under the unsteered model:\n" + ppl.round(1).to_string())
    if measured["reps"]:
        print(f"RePS: {json.dumps(measured['reps'])}")
    # The keys of a run without RePS stay those of the first record (its rows compare one to one).
    extra = {"concept_ids": [int(c) for c in args.concepts.split(",")]} if args.concepts else {}
    if measured["reps"]:
        extra.update(methods=methods, reps_pairs_per_concept=args.reps_pairs,
                     reps_settings="rank-1 vector, 2 epochs, batch 6, lr 0.08, seed 0, 32-token responses",
                     reps=measured["reps"])
    write_record(args.record, "lexical concept score (%) and perplexity of suppression generations on "
                 "Concept10, per method, factor and attack (mean over concepts)",
                 {"layer": args.layer, "concepts": measured["concepts"], "prompts_per_concept": args.prompts,
                  "max_new_tokens": args.max_new_tokens, "decoding": "greedy", "generations": measured["generations"],
                  "seconds": round(seconds), **extra, "rows": table.to_dict(orient="records")},
                 how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
