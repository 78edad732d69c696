"""Rule concepts with SmolLM2-135M-Instruct, scored by their programmatic checkers — no judge (issue 26).

Every packaged rule with a checker (`axdata.concepts.load_rule_concepts()`, `axeval.rules`) gets the first
`--prompts` instructions of our shipped pool, the same for every rule. Fixed templates only (no LLM), so the
prompts are the same on every machine:

- steering towards the rule (the steering stage's `generate_steering`): the unsteered model on the plain
  instruction vs prompt steering (the registry's `prompt-steering` with `llm_prompts: false`, i.e. the fixed
  `FALLBACK_STEERING_PROMPT` naming the rule, prepended to the question);
- suppression of the rule (the suppression stage's `generate_suppression`): the unsteered model on the rule-blended
  instruction (`FALLBACK_BLEND_RULE`: "<instruction> In your answer, follow this rule: <rule>") vs the defence
  prompt (`FALLBACK_DEFENCE_RULE`) in the system turn / before / after the user's text (`DefenceSteerer`), each
  also under the overwrite-postfix attack (`axeval.modes.OVERWRITE_TEXT`).

Score: the stages' own `rule_score` column (the checker's score in [0, 1], 1 = the rule is followed), averaged over
prompts per rule, then over rules. Higher is better for steering, lower for suppression. Rules whose checker the
token budget alone decides (min_words:N above it can never pass; max_words:N at or above it passes for any
non-empty answer) stay in the per-rule table and out of the means. Greedy decoding. Writes
benchmarks/results/rules_smollm2.json.

    python benchmarks/rules_smollm2.py    # 19 rules × 4 prompts × 10 variants = 760 generations: 27 min on 2
                                          # CPU cores shared with another job (load 2–4); --overwrite '' drops 304
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from records import Load, write_record

from axdata.builders import write_concepts, write_split
from axdata.concepts import Concept, load_rule_concepts
from axdata.generation.templates import FALLBACK_BLEND_RULE, FALLBACK_DEFENCE_RULE, FALLBACK_STEERING_PROMPT
from axdata.schema import HALVES, table_from_frame
from axeval.config import InferenceSection
from axeval.modes import DEFENCE_METHOD, DEFENCE_PLACEMENTS, NO_ATTACK, DefenceSteerer, EvaluationSection
from axeval.stages.dataset import RunDataset
from axeval.stages.methods import generate_steering
from axeval.stages.suppression import generate_suppression
from axmethods.contract import UnsteeredBaseline
from axmethods.models import load_target_model
from axmethods.registry import get_method

CONFIG = "rules"
MODEL = "smollm2-135m-instruct"


def shipped_instructions(n: int) -> list[str]:
    """The first `n` instructions of our shipped pool (as suppression_concept10.py picks them)."""
    pool = resources.files("axdata") / "resources" / "instructions" / "general.jsonl"
    return [json.loads(line)["input"] for line in pool.read_text().splitlines()[:n]]


def decided_by_budget(checker: str, max_new_tokens: int) -> bool:
    """Whether the token budget alone decides `checker`: a word takes at least one token, so min_words:N with
    N > budget never passes and max_words:N with N ≥ budget passes for every non-empty answer."""
    name, _, argument = checker.partition(":")
    if name not in ("min_words", "max_words") or not argument.isdigit():
        return False
    return int(argument) > max_new_tokens if name == "min_words" else int(argument) >= max_new_tokens


def build_rows(rules: Sequence[Concept], instructions: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The steering and suppression splits: every rule × every instruction, with the fixed templates' texts."""
    steering, suppression = [], []
    for rule in rules:
        for k, text in enumerate(instructions):
            common = {"concept_id": rule.concept_id, "input_concept": rule.concept, "input_id": k,
                      "original_prompt": text, "half": HALVES[0] if k < len(instructions) // 2 else HALVES[1]}
            steering.append({"dataset_name": "general", **common,
                             "steering_prompt": FALLBACK_STEERING_PROMPT.render(concept=rule.concept)})
            suppression.append({"dataset_name": "suppression", **common,
                                "blended_prompt": FALLBACK_BLEND_RULE.render(instruction=text, concept=rule.concept),
                                "defence_prompt": FALLBACK_DEFENCE_RULE.render(concept=rule.concept)})
    return pd.DataFrame(steering), pd.DataFrame(suppression)


def variant_label(mode: str, method: str, attack: str) -> str:
    """A column of the per-rule table: "steer: unsteered", "suppress: system", "overwrite-postfix: append"."""
    kind = "steer" if mode == "steering" else "suppress" if attack == NO_ATTACK else attack
    return f"{kind}: {method.removeprefix(DEFENCE_METHOD + '/')}"


def score_tables(generations: pd.DataFrame, rules: Sequence[Concept], max_new_tokens: int
                 ) -> tuple[list[dict], list[dict]]:
    """Per rule, one row with the mean `rule_score` of each (mode, method, attack) — a wide table, so the rendered
    record stays 1 row per rule — and the means over the rules the budget does not decide, one row per variant."""
    frame = generations.assign(label=[variant_label(m, me, a) for m, me, a in
                                      zip(generations["mode"], generations["method"], generations["attack"])])
    labels = list(dict.fromkeys(frame["label"]))  # in generation order: steering first, then suppression
    per_rule = frame.groupby(["concept_id", "label"])["rule_score"].mean().unstack("label")
    decided = {r.concept_id: decided_by_budget(r.checker or "", max_new_tokens) for r in rules}
    rows = [{"rule": r.concept_id, "checker": r.checker, "budget-decided": decided[r.concept_id],
             **{label: round(float(per_rule.loc[r.concept_id, label]), 3) for label in labels}}
            for r in rules if r.concept_id in per_rule.index]
    kept = per_rule.loc[[cid for cid in per_rule.index if not decided[int(cid)]]]
    means = [{"variant": label, "rules": int(kept[label].notna().sum()), "mean checker score":
              round(float(kept[label].mean()), 3)} for label in labels]
    return rows, means


def measure(*, prompts: int = 4, max_new_tokens: int = 48, rule_ids: Sequence[int] | None = None,
            defences: Sequence[str] = DEFENCE_PLACEMENTS, overwrite: Sequence[str] = ("postfix",),
            batch_size: int = 32) -> dict:
    """Generate every variant for the rules with a checker (or those of `rule_ids`) and score them; returns the
    per-rule rows, the means and the facts. A slow test may run a slice of it."""
    started = time.perf_counter()
    rules = [r for r in load_rule_concepts() if r.checker and (rule_ids is None or r.concept_id in rule_ids)]
    if not rules:
        raise SystemExit(f"no packaged rule with a checker among ids {list(rule_ids or [])}")
    work = Path(tempfile.mkdtemp(prefix="rules-smollm2-"))
    write_concepts(rules, work, CONFIG)
    steering, suppression = build_rows(rules, shipped_instructions(prompts))
    write_split(table_from_frame(steering, "steering"), work, CONFIG, "steering")
    write_split(table_from_frame(suppression, "suppression"), work, CONFIG, "suppression")
    dataset = RunDataset(work, CONFIG)

    target = load_target_model(MODEL, device="cpu", dtype="auto")
    spec = get_method("prompt-steering")  # llm_prompts false: the fixed sentence, as a run without an LLM stores
    prompting = spec.train(target, lambda split: pd.DataFrame(), rules, 0, spec.settings({"llm_prompts": False}))
    settings = InferenceSection(factors=[1.0], max_new_tokens=max_new_tokens, temperature=0.0,
                                steering_batch_size=batch_size)
    steered = generate_steering(target, [UnsteeredBaseline(), prompting.steerer()], dataset,
                                work / "steering.parquet", settings=settings, seed=0)
    evaluation = EvaluationSection(modes=["suppression", "attacks"] if overwrite else ["suppression"],
                                   defences=list(defences), many_shot=[], overwrite=list(overwrite))
    suppressed = generate_suppression(target, [UnsteeredBaseline(), *(DefenceSteerer(d) for d in defences)],
                                      dataset, work / "suppression.parquet", settings=settings,
                                      evaluation=evaluation, seed=0)
    generations = pd.concat([pd.read_parquet(work / "steering.parquet").assign(mode="steering", attack=NO_ATTACK),
                             pd.read_parquet(work / "suppression.parquet")], ignore_index=True)
    rows, means = score_tables(generations, rules, max_new_tokens)
    return {"per_rule": rows, "means": means, "rules": len(rules), "prompts": prompts,
            "generations": steered["generations"] + suppressed["generations"],
            "seconds": time.perf_counter() - started, "examples": generations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4, help="instructions of the shipped pool per rule")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rules", default="", help="rule ids (comma-separated); default: every rule with a checker")
    parser.add_argument("--overwrite", default="postfix", help="overwrite placements ('' for none)")
    args = parser.parse_args()
    rule_ids = [int(r) for r in args.rules.split(",") if r] or None
    overwrite = [p for p in args.overwrite.split(",") if p]
    load = Load.now()
    measured = measure(prompts=args.prompts, max_new_tokens=args.max_new_tokens, rule_ids=rule_ids,
                       overwrite=overwrite)
    print(f"\nSmolLM2-135M-Instruct, {measured['rules']} rules × {args.prompts} prompts, {args.max_new_tokens} greedy "
          f"tokens, {measured['generations']} generations, {measured['seconds']:.0f} s")
    print("checker score per rule (1 = rule followed; steer: higher is better, suppress/overwrite: lower):")
    print(pd.DataFrame(measured["per_rule"]).set_index("rule").to_string())
    print("mean over rules not decided by the token budget:")
    print(pd.DataFrame(measured["means"]).set_index("variant").to_string())
    write_record("rules_smollm2", "programmatic checker score (0–1) of rule concepts with SmolLM2-135M-Instruct: "
                 "prompt steering towards each rule and defence prompts against it (with the overwrite attack)",
                 {"model": MODEL, "rules": measured["rules"], "prompts_per_rule": args.prompts,
                  "max_new_tokens": args.max_new_tokens, "decoding": "greedy", "generations": measured["generations"],
                  "seconds": round(measured["seconds"]), "means": measured["means"], "per_rule": measured["per_rule"]},
                 how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
