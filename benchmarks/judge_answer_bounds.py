"""How bounding the judge's answer changes a small judge: the embedded SmolLM2 judge, reason unbounded vs bounded.

Rates real AxBench Concept10 texts (each latent-split output as the "generation", its concept and instruction)
with both settings at temperature 0 and prints, per setting, the parse failures, the answer tokens, the wall time,
and how often the two settings give the same rating (there are no human labels here: agreement between the
settings, not with people).

    python benchmarks/judge_answer_bounds.py --rows 40 --reason-max-chars 160
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from concept10_data import load_concept10
from records import Load, record_option, write_record

from axdata.llm import LLMConfig, open_llm
from axeval.judge import Judge, JudgeConfig
from axeval.judge_templates import CRITERIA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--reason-max-chars", type=int, default=160)
    parser.add_argument("--max-tokens", type=int, default=128)
    record_option(parser, "judge_answer_bounds")
    args = parser.parse_args()
    load = Load.now()
    data = load_concept10()
    latent = data.latent
    described = {concept.concept_id: concept.concept for concept in data.concepts}
    rows = latent.sample(n=args.rows, random_state=0).reset_index(drop=True)
    generations = pd.DataFrame({"concept_id": rows["concept_id"], "concept": rows["concept_id"].map(described),
                                "instruction": rows["input"], "generation": rows["output"].str.slice(0, 600)})
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp, \
            open_llm(LLMConfig(endpoint="embedded", model="smollm2-135m-instruct", max_concurrency=4,
                               timeout_s=300), cache_path=Path(tmp) / "cache.sqlite") as llm:
        for name, bound in (("unbounded", None), (f"reason ≤ {args.reason_max_chars} chars", args.reason_max_chars)):
            config = JudgeConfig(temperature=0.0, max_tokens=args.max_tokens, reason_max_chars=bound,
                                 max_seconds_per_rating=600)
            started = time.perf_counter()
            table = Judge(llm, config).judge(generations)
            seconds = time.perf_counter() - started
            results[name] = table
            tokens = [entry["completion_tokens"] for entry in llm.ledger.session_entries[-len(table) * 3:]]
            print(f"{name}: {int((table['parse_status'] != 'ok').sum())} of {len(table)} generations with a parse "
                  f"failure, {len(llm.ledger.session_entries)} answers so far, mean answer tokens "
                  f"{np.mean(tokens):.1f}, {seconds:.0f} s")
            rows.append({"setting": name, "parse failures": int((table["parse_status"] != "ok").sum()),
                         "generations": len(table), "mean answer tokens": round(float(np.mean(tokens)), 1),
                         "seconds": round(seconds)})
    a, b = results.values()
    agreement = {}
    for criterion in CRITERIA:
        column = f"{criterion}_rating"
        both = a[column].notna() & b[column].notna()
        same = float((a.loc[both, column] == b.loc[both, column]).mean()) if both.any() else float("nan")
        print(f"{criterion}: the two settings agree on {same:.0%} of {int(both.sum())} ratings both parsed")
        agreement[criterion] = {"same rating": round(same, 3), "both parsed": int(both.sum())}
    write_record(args.record, "the embedded SmolLM2 judge with its answer's reason unbounded vs bounded: "
                 "parse failures, answer tokens, time, and how often the two settings give the same rating",
                 {"rows_rated": args.rows, "max_tokens": args.max_tokens, "temperature": 0.0,
                  "settings": rows, "agreement": agreement}, how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
