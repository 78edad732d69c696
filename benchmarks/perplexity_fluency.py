"""Perplexity vs the judge's fluency rating on a finished run: Spearman's rho, overall and per method, with n.

Reads the run's judged steering generations (`eval/judgements.parquet`, each with the `perplexity` the steering
stage computed under the unsteered model) and computes the report's own figure (`axeval.report
.perplexity_vs_fluency`, over every judged generation: all factors, both halves), plus a percentile-bootstrap
interval that resamples concepts (the generations of one concept are not independent; the leaderboard's
intervals resample concepts too). Lower perplexity should go with higher fluency: a negative rho is agreement.
Nothing is generated or judged again.

    python benchmarks/perplexity_fluency.py /tmp/demo1copy/demo      # record: perplexity_fluency_demo.json
    python benchmarks/perplexity_fluency.py RUN_DIR --record perplexity_fluency_concept10
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from records import Load, write_record

from axeval import steering
from axeval.report import ReportInputs, perplexity_vs_fluency, spearman


def concept_bootstrap(rows: pd.DataFrame, n_resamples: int, seed: int) -> dict[str, Any]:
    """95% percentile interval of rho over resampled concepts (with replacement); resamples where rho is undefined
    (too few or constant values) are dropped and counted."""
    groups = [group for _, group in rows.groupby("concept_id")]
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(n_resamples):
        sample = pd.concat([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        rhos.append(spearman(sample["perplexity"], sample["fluency_rating"]))
    defined = np.array([rho for rho in rhos if not math.isnan(rho)])
    low, high = np.percentile(defined, [2.5, 97.5]) if len(defined) else (math.nan, math.nan)
    return {"ci_low": float(low), "ci_high": float(high), "n_concepts": len(groups),
            "resamples_undefined": n_resamples - len(defined)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a finished run directory (its eval/judgements.parquet)")
    parser.add_argument("--record", help="record name (default: perplexity_fluency_<run folder name>)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load = Load.now()
    judgements = ReportInputs.from_run_dir(args.run_dir).judgements
    if judgements is None or "perplexity" not in judgements:
        sys.exit(f"{args.run_dir} has no judged steering generations with perplexity (eval/judgements.parquet with "
                 "a perplexity column); run its steering and judge stages first.")
    scored = steering.score_generations(judgements)
    both = scored.dropna(subset=["perplexity", "fluency_rating"])
    table = perplexity_vs_fluency(scored)
    results: dict[str, Any] = {"run_dir": str(args.run_dir), "generations_judged": len(scored),
                               "judge_model": sorted(map(str, judgements.get("judge_model", pd.Series()).unique()))}
    for record in table.to_dict("records"):
        rows = both if record["method"] == "all" else both[both["method"] == record["method"]]
        results[record["method"]] = {"spearman_rho": None if math.isnan(record["spearman_rho"])
                                     else record["spearman_rho"], "n": int(record["n"]),
                                     "mean_fluency": record["mean_fluency"],
                                     "median_perplexity": record["median_perplexity"],
                                     **concept_bootstrap(rows, args.resamples, args.seed)}
    board = args.run_dir / "eval" / "leaderboard.json"
    if board.is_file():  # the report's own figure, where the report was built with this code
        results["leaderboard_perplexity_fluency_spearman"] = json.loads(board.read_text()).get(
            "perplexity_fluency_spearman")
    print(table.round(3).to_string(index=False))
    write_record(args.record or f"perplexity_fluency_{args.run_dir.resolve().name}",
                 "Spearman rho between each judged generation's perplexity under the unsteered model and the "
                 "judge's fluency rating (negative = agreement), overall and per method, with a concept-bootstrap "
                 "95% interval", results, how=f"python benchmarks/perplexity_fluency.py {args.run_dir}", load=load,
                 notes="the rho itself is axeval.report.perplexity_vs_fluency (what the report shows); the interval "
                       f"resamples concepts {args.resamples} times, seed {args.seed}")


if __name__ == "__main__":
    main()
