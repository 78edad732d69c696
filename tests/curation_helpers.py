"""A small judged run directory for the curation tests (the columns the judge stage writes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from axeval.judge_templates import JUDGE_TEMPLATE_HASH

METHODS = {"diffmean": [0.5, 1.0, 2.0, 4.0], "reft-r1": [0.5, 1.0, 2.0, 4.0], "prompt-steering": [np.nan]}


def judged_frame(n_prompts: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for method, factors in METHODS.items():
        for concept_id, concept in enumerate(["rivers and river banks", "Python list comprehensions"]):
            for prompt_id in range(n_prompts):
                for factor in factors:
                    rows.append({
                        "concept_id": concept_id, "concept": concept, "prompt_id": prompt_id,
                        "half": "selection" if prompt_id % 2 == 0 else "heldout",
                        "instruction": f"Question {prompt_id}: tell me about topic {prompt_id}.",
                        "factor": factor, "method": method,
                        "generation": f"{method} f={factor} on {concept} #{prompt_id}: **some** text.",
                        "concept_rating": float(rng.integers(0, 3)), "instruction_rating": float(rng.integers(0, 3)),
                        "fluency_rating": float(rng.integers(0, 3)), "parse_status": "ok",
                    })
    frame = pd.DataFrame(rows)
    frame["judge_model"] = "stand-in-judge"
    frame["judge_template_hash"] = JUDGE_TEMPLATE_HASH
    frame["judge_temperature"] = 0.0
    frame["judge_calls"] = 3
    frame["judge_cost_usd"] = 0.0
    return frame


def write_judged_run(root: Path, frame: pd.DataFrame | None = None) -> Path:
    frame = judged_frame() if frame is None else frame
    (root / "eval").mkdir(parents=True, exist_ok=True)
    frame.to_parquet(root / "eval" / "judgements.parquet", index=False)
    (root / "config.yaml").write_text(yaml.safe_dump({"run": {"name": root.name, "layer": 10},
                                                      "model": {"model": "smollm2-135m-instruct"}}))
    return root
