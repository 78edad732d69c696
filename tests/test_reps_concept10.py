"""Science check: a short RePS run on SmolLM2-135M-Instruct with Concept10 preference pairs steers.

Pairs: the first 36 training positives of concept 9 ("references to different worlds, realities, or
fantastical settings within narratives", prod_2b_l20_v1) win over SmolLM2's own greedy answers to the same
instructions (32 tokens each). RePS rank-1 vector at layer 10, 2 epochs of 6 steps.

Evaluation on 12 held-out instructions of our shipped pool (never seen in training), greedy, 40 new tokens.
The concept score is a transparent lexical proxy, documented in the README: the share (%) of a generation's
words that are among the concept's 30 signature words — the words with the highest smoothed log-odds of
appearing in the concept's training responses versus the model's own answers (present in at least 5
winners). The factor is picked on the first 6 instructions and reported on the other 6, as AxBench picks
factors on one half and scores the other.
"""

from __future__ import annotations

import json
import math
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from axdata.builders import read_concepts, read_split
from axdata.builders.axbench_import import import_axbench
from axeval.lexical import lexical_score, signature_words

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "axbench" / "concept10" / "prod_2b_l20_v1"
LAYER, CONCEPT_ID, N_PAIRS = 10, 9, 36
FACTORS = (4.0, 8.0, 12.0, 20.0)


def concept_signature(pairs: pd.DataFrame) -> list[str]:
    # axeval.lexical with this check's original settings: a word in at least 5 of the 36 winners, no stop-word
    # list and no log-odds floor (the report's default adds both for small train splits).
    return signature_words(pairs["winning_output"], pairs["losing_output"], k=30, min_share=4.5 / N_PAIRS,
                           min_log_odds=-math.inf, stop_words=())


def concept_score(texts: list[str], signature: list[str]) -> float:
    return float(np.mean([lexical_score(text, signature) for text in texts]))


@pytest.mark.slow
@pytest.mark.skipif(not SOURCE.is_dir(), reason=f"AxBench Concept10 data not found at {SOURCE} (shared data "
                                                 "checkout absent); the science check needs the real data.")
def test_reps_steers_smollm2_towards_a_concept10_concept(tmp_path: Path) -> None:
    from axmethods.inference.sampling import SamplingConfig, sample
    from axmethods.interventions import steer
    from axmethods.models import load_target_model
    from axmethods.trainers import RePSConfig, RePSTrainer, preference_frame

    import_axbench(SOURCE, tmp_path, "c10")
    concepts = [c for c in read_concepts(tmp_path, "c10") if c.concept_id == CONCEPT_ID]
    train = read_split(tmp_path, "c10", "train")
    positives = train[(train["concept_id"] == CONCEPT_ID) & (train["category"] == "positive")].head(N_PAIRS)
    target = load_target_model("smollm2-135m-instruct", device="cpu", dtype="auto")

    started = time.perf_counter()
    pairs = preference_frame(target, positives, concepts, max_new_tokens=32, batch_size=36)
    pairs_seconds = time.perf_counter() - started
    args = RePSConfig(layer=LAYER, num_train_epochs=2, per_device_train_batch_size=6, learning_rate=0.08,
                      max_response_length=32, logging_steps=6, disable_tqdm=True, seed=0)
    trainer = RePSTrainer(model=target, args=args, train_dataset=pairs, concepts=concepts)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    dictionary = trainer.export()

    pool = resources.files("axdata") / "resources" / "instructions" / "general.jsonl"
    instructions = [json.loads(line)["input"] for line in pool.read_text().splitlines()[:12]]
    assert not set(instructions) & set(pairs["input"])  # held out
    prompts = [target.encode(target.format_prompt(text)) for text in instructions]
    greedy = SamplingConfig(max_new_tokens=40, temperature=0.0)

    def generate(factor: float | None) -> list[str]:
        if factor is None:
            tokens = sample(target, prompts, [0] * len(prompts), greedy)
        else:
            with steer(target, dictionary, [CONCEPT_ID] * len(prompts), [factor] * len(prompts)):
                tokens = sample(target, prompts, [0] * len(prompts), greedy)
        return target.tokenizer.batch_decode(tokens, skip_special_tokens=True)

    signature = concept_signature(pairs)
    unsteered = generate(None)
    steered = {factor: generate(factor) for factor in FACTORS}
    selection = {f: concept_score(texts[:6], signature) for f, texts in steered.items()}
    best = max(selection, key=selection.get)
    held_out = concept_score(steered[best][6:], signature)
    baseline = concept_score(unsteered[6:], signature)
    margins = [entry["margin/orig_add"] for entry in trainer.state.log_history if "margin/orig_add" in entry]
    print(f"\nRePS on SmolLM2 L{LAYER}, concept {CONCEPT_ID}, {len(pairs)} pairs: pairs {pairs_seconds:.0f} s, "
          f"train {train_seconds:.0f} s ({trainer.state.global_step} steps); orig_add margin {margins[0]:.3f} → "
          f"{margins[-1]:.3f}; selection scores {selection}; held-out concept score at factor {best}: "
          f"{held_out:.2f} % vs unsteered {baseline:.2f} %\nexample: {steered[best][6][:160]!r}")
    assert held_out >= baseline + 3.0 and held_out >= 3 * max(baseline, 0.5)
