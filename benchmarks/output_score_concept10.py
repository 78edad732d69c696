"""Output scores (Arad et al. 2025; axmethods.output_score) of DiffMean rows on AxBench Concept10 vs random
directions, with SmolLM2-135M-Instruct (embedded, CPU). Needs ../shared.

DiffMean is fitted on the train split at one layer and calibrated on the latent split (as `axbench run` does);
each row is then added at amplification × its calibration on the neutral prompt. Random directions: unit
vectors added at amplification × the median DiffMean calibration (the same magnitude). Prints per concept the
score and the row's logit-lens tokens, the scores at several amplifications, and the time taken.

    python benchmarks/output_score_concept10.py --setting prod_2b_l20_v1 --layer 10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from concept10_data import load_concept10
from records import Load, record_option, write_record

from axmethods.dictionary import SteeringDictionary
from axmethods.inference.latent import calibrate, latent_inference
from axmethods.models import load_target_model
from axmethods.output_score import THRESHOLD, OutputScoreSettings, logit_lens_tokens, output_scores
from axmethods.registry import get_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="prod_2b_l20_v1")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--random", type=int, default=200, help="random directions")
    parser.add_argument("--amplifications", default="2,5,10,20")
    parser.add_argument("--dictionary", type=Path, help="reuse (or, if absent, save) the calibrated DiffMean here")
    record_option(parser, "output_score_concept10")
    args = parser.parse_args()
    load = Load.now()
    data = load_concept10(args.setting)
    concepts, train, latent = data.concepts, data.train, data.latent
    target = load_target_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    if args.dictionary is not None and args.dictionary.is_dir():
        diffmean = SteeringDictionary.load(args.dictionary, expect_model=target)
    else:
        diffmean = get_method("diffmean").load()({"max_length": args.max_length}).fit(target, train, concepts,
                                                                                     args.layer)
        diffmean = calibrate(diffmean, latent_inference(target, [diffmean], latent, progress=False))
        if args.dictionary is not None:
            diffmean.save_pretrained(args.dictionary)
    rows, calibration = diffmean.steering_vectors, diffmean.calibration
    generator = torch.Generator().manual_seed(0)
    random = torch.randn(args.random, target.hidden_size, generator=generator)
    random /= random.norm(dim=1, keepdim=True)
    scale = float(calibration.median())
    print(f"Concept10 {args.setting}, SmolLM2-135M L{args.layer}: {len(concepts)} DiffMean rows (norm "
          f"{rows.norm(dim=1).mean():.3f}), calibration median {scale:.2f}; {args.random} random unit directions")
    lens = logit_lens_tokens(target, rows, 5)
    amplified, per_concept = [], []
    for amplification in [float(a) for a in args.amplifications.split(",")]:
        settings = OutputScoreSettings(amplification=amplification)
        start = time.perf_counter()
        ours = output_scores(target, args.layer, rows, amplification * calibration, settings)
        middle = time.perf_counter()
        theirs = output_scores(target, args.layer, random, amplification * scale, settings)
        end = time.perf_counter()
        print(f"\namplification {amplification:g}: DiffMean median {ours.median():.4f} mean {ours.mean():.4f}, "
              f"≥ {THRESHOLD}: {int((ours >= THRESHOLD).sum())}/{len(ours)} | random median {theirs.median():.4f} "
              f"mean {theirs.mean():.4f} p95 {theirs.quantile(0.95):.4f}, ≥ {THRESHOLD}: "
              f"{int((theirs >= THRESHOLD).sum())}/{len(theirs)} | {middle - start:.2f} s for {len(ours)} rows, "
              f"{end - middle:.2f} s for {len(theirs)}")
        amplified.append({"amplification": amplification, "DiffMean median": round(float(ours.median()), 4),
                          "DiffMean mean": round(float(ours.mean()), 4),
                          f"DiffMean ≥ {THRESHOLD}": f"{int((ours >= THRESHOLD).sum())} of {len(ours)}",
                          "random median": round(float(theirs.median()), 4),
                          "random mean": round(float(theirs.mean()), 4),
                          "random p95": round(float(theirs.quantile(0.95)), 4),
                          f"random ≥ {THRESHOLD}": f"{int((theirs >= THRESHOLD).sum())} of {len(theirs)}",
                          "DiffMean (s)": round(middle - start, 2), "random (s)": round(end - middle, 2)})
        if amplification == 10.0:
            for concept, score, tokens in zip(diffmean.concepts, ours.tolist(), lens.tolist()):
                words = [target.tokenizer.decode([t]) for t in tokens]
                print(f"  {score:.4f}  {concept.concept[:60]!r}  lens: {words}")
                per_concept.append({"concept": concept.concept[:60], "score at 10": round(score, 4),
                                    "logit-lens tokens": words})
    write_record(args.record, "output scores of DiffMean rows vs random unit directions per amplification",
                 {"setting": args.setting, "layer": args.layer, "rows": len(rows), "random": args.random,
                  "calibration_median": round(scale, 2), "amplifications": amplified,
                  "per_concept": per_concept},
                 how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
