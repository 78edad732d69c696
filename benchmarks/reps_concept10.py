"""RePS on the real Concept10 data with SmolLM2-135M-Instruct: does a short run steer? (issue 28).

Pairs: the first 36 training positives of concept 9 ("references to different worlds, realities, or fantastical
settings within narratives", prod_2b_l20_v1) win over SmolLM2's own greedy answers to the same instructions
(32 tokens each). RePS rank-1 vector at layer 10, 2 epochs of 6 steps (batch 6, lr 0.08, seed 0).

Evaluation on 12 instructions of our shipped pool (never seen in training), greedy, 40 new tokens. The concept
score is the lexical proxy of `axeval.lexical`: the share (%) of a generation's words among the concept's 30
signature words — the words with the highest smoothed log-odds of appearing in the pairs' winners versus the
model's own answers (present in at least 5 winners; no stop-word list, no log-odds floor: this check's original
settings). The factor is picked on the first 6 instructions and reported on the other 6, as AxBench picks
factors on one half and scores the other. `tests/test_reps_concept10.py` runs `measure()` and asserts that the
picked factor steers. Needs ../shared; writes benchmarks/results/reps_concept10.json.

    nice -n 19 python benchmarks/reps_concept10.py                            # the recorded run, ~2 min on 2 cores
    AXBENCH_RECORDS_DIR=/tmp/x python benchmarks/reps_concept10.py           # a run that leaves the record alone
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from concept10_data import DEFAULT_SETTING, load_concept10
from records import Load, record_option, write_record

from axeval.lexical import lexical_score, signature_words

FACTORS = (4.0, 8.0, 12.0, 20.0)


def concept_signature(pairs: pd.DataFrame, k: int = 30) -> list[str]:
    # axeval.lexical with this check's original settings: a word in at least 5 of the 36 winners, no stop-word
    # list and no log-odds floor (the report's default adds both for small train splits).
    return signature_words(pairs["winning_output"], pairs["losing_output"], k=k, min_share=4.5 / len(pairs),
                           min_log_odds=-math.inf, stop_words=())


def concept_score(texts: list[str], signature: list[str]) -> float:
    return float(np.mean([lexical_score(text, signature) for text in texts]))


def measure(*, layer: int = 10, concept_id: int = 9, n_pairs: int = 36, factors: tuple[float, ...] = FACTORS,
            prompts: int = 12, max_new_tokens: int = 40) -> dict[str, Any]:
    """Make the pairs, train RePS, steer at each factor; return the scores (%), the picked factor, the margins.
    The first `prompts // 2` instructions select the factor, the rest report it."""
    from axmethods.inference.sampling import SamplingConfig, sample
    from axmethods.interventions import steer
    from axmethods.models import load_target_model
    from axmethods.trainers import RePSConfig, RePSTrainer, preference_frame

    wall = time.perf_counter()
    data = load_concept10()
    concepts = [c for c in data.concepts if c.concept_id == concept_id]
    train = data.train
    positives = train[(train["concept_id"] == concept_id) & (train["category"] == "positive")].head(n_pairs)
    target = load_target_model("smollm2-135m-instruct", device="cpu", dtype="auto")

    started = time.perf_counter()
    pairs = preference_frame(target, positives, concepts, max_new_tokens=32, batch_size=36)
    pairs_seconds = time.perf_counter() - started
    args = RePSConfig(layer=layer, num_train_epochs=2, per_device_train_batch_size=6, learning_rate=0.08,
                      max_response_length=32, logging_steps=6, disable_tqdm=True, seed=0)
    trainer = RePSTrainer(model=target, args=args, train_dataset=pairs, concepts=concepts)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    dictionary = trainer.export()

    pool = resources.files("axdata") / "resources" / "instructions" / "general.jsonl"
    instructions = [json.loads(line)["input"] for line in pool.read_text().splitlines()[:prompts]]
    # A guard, not a result: the scores below mean nothing on instructions the pairs trained on.
    assert not set(instructions) & set(pairs["input"]), "evaluation instructions overlap the training pairs"
    encoded = [target.encode(target.format_prompt(text)) for text in instructions]
    greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)

    def generate(factor: float | None) -> list[str]:
        if factor is None:
            tokens = sample(target, encoded, [0] * len(encoded), greedy)
        else:
            with steer(target, dictionary, [concept_id] * len(encoded), [factor] * len(encoded)):
                tokens = sample(target, encoded, [0] * len(encoded), greedy)
        return target.tokenizer.batch_decode(tokens, skip_special_tokens=True)

    half = prompts // 2
    signature = concept_signature(pairs)
    unsteered = generate(None)
    steered = {factor: generate(factor) for factor in factors}
    selection = {f: concept_score(texts[:half], signature) for f, texts in steered.items()}
    best = max(selection, key=selection.get)
    margins = [entry["margin/orig_add"] for entry in trainer.state.log_history if "margin/orig_add" in entry]
    # One row per steering: every factor's held-out score is shown so nothing hides, but only `picked` is the result.
    rows = [{"steering": "unsteered", "factor": None, "selection_half": concept_score(unsteered[:half], signature),
             "held_out_half": concept_score(unsteered[half:], signature), "picked": False},
            *({"steering": "RePS", "factor": f, "selection_half": selection[f],
               "held_out_half": concept_score(texts[half:], signature), "picked": f == best}
              for f, texts in steered.items())]
    return {"concept_id": concept_id, "concept": concepts[0].concept, "pairs": len(pairs), "layer": layer,
            "steps": trainer.state.global_step, "signature": signature, "selection": selection, "factor": best,
            "held_out": rows[1 + list(steered).index(best)]["held_out_half"], "unsteered": rows[0]["held_out_half"],
            "margins": margins, "pairs_seconds": pairs_seconds, "train_seconds": train_seconds,
            "seconds": time.perf_counter() - wall, "example": steered[best][half], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--concept", type=int, default=9, help="Concept10 concept id")
    parser.add_argument("--pairs", type=int, default=36, help="training positives used as winners")
    record_option(parser, "reps_concept10")
    args = parser.parse_args()
    load = Load.now()
    m = measure(layer=args.layer, concept_id=args.concept, n_pairs=args.pairs)
    table = pd.DataFrame(m["rows"])
    print(f"\nRePS on SmolLM2-135M-Instruct L{m['layer']}, Concept10 {DEFAULT_SETTING} concept {m['concept_id']}, "
          f"{m['pairs']} pairs: pairs {m['pairs_seconds']:.0f} s, train {m['train_seconds']:.0f} s "
          f"({m['steps']} steps); orig_add margin {m['margins'][0]:.3f} → {m['margins'][-1]:.3f}\n"
          f"concept score (%):\n{table.round(2).to_string(index=False)}\n"
          f"held-out at factor {m['factor']:g}: {m['held_out']:.2f} % vs unsteered {m['unsteered']:.2f} %\n"
          f"example: {m['example'][:160]!r}")
    write_record(args.record, "lexical concept score (%) of SmolLM2-135M-Instruct's greedy answers to held-out "
                 "instructions, unsteered and steered by a short RePS run on one Concept10 concept; the factor is "
                 "picked on the selection half and reported on the held-out half",
                 {"setting": DEFAULT_SETTING, "concept_id": m["concept_id"], "concept": m["concept"],
                  "layer": m["layer"], "pairs": m["pairs"], "steps": m["steps"], "decoding": "greedy, 40 tokens",
                  "picked_factor": m["factor"], "held_out_reps": m["held_out"],
                  "held_out_unsteered": m["unsteered"], "orig_add_margin_first": m["margins"][0],
                  "orig_add_margin_last": m["margins"][-1], "pairs_seconds": round(m["pairs_seconds"], 1),
                  "train_seconds": round(m["train_seconds"], 1), "seconds": round(m["seconds"], 1),
                  "example": m["example"], "signature": m["signature"], "rows": m["rows"]},
                 how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
