"""Concept detection on the real AxBench Concept10 data with the embedded SmolLM2: every method's AUROC.

The toolkit's own path end to end: import (axdata) → fit (axmethods.methods) → one-pass latent inference
(axmethods.inference) → per-concept AUROC with a bootstrap CI (axeval.detection). Needs ../shared.

    python benchmarks/concept10_detection.py --concepts 5 --layer 10 --max-length 96
    python benchmarks/concept10_detection.py --methods diffmean,probe,ig,ixg --record concept10_ig_ixg

IG and IxG score by attribution (a forward and a backward through the upper blocks per row, ×10 path points for IG):
`--rows-per-category N` scores every method on the first N latent rows of each concept and category only (the same
rows for all, so the AUROCs compare). IxG reuses IG's head: both train the same Probe head (tests/test_ig.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import pandas as pd
from concept10_data import load_concept10
from records import Load, record_option, write_record

from axeval.detection import concept_detection, summarize_detection
from axmethods.activations import ActivationCollector, resolve_dtype
from axmethods.inference.latent import latent_inference
from axmethods.methods.base import ActivationMethod
from axmethods.models import load_target_model
from axmethods.registry import get_method

DEFAULT_METHODS = ["diffmean", "pca", "lat", "probe", "bow", "reft-r1", "ssv"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="prod_2b_l20_v1")
    parser.add_argument("--concepts", type=int, default=5)
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--lm-epochs", type=int, default=1, help="Epochs of the LM-trained methods (paper: 3).")
    parser.add_argument("--rows-per-category", type=int, default=None, help="Score every method on the first N "
                        "latent rows of each concept and category (IG / IxG are far slower to score than a read-out).")
    record_option(parser, "concept10_detection")
    args = parser.parse_args()

    load = Load.now()  # others may share the CPU: the record says how busy it was
    data = load_concept10(args.setting)
    concepts = data.concepts[: args.concepts]
    ids = {c.concept_id for c in concepts}
    train, latent = data.train, data.latent
    latent = latent[latent["concept_id"].isin(ids)].reset_index(drop=True)
    if args.rows_per_category is not None:
        latent = latent.groupby(["concept_id", "category"], sort=False).head(args.rows_per_category)
        latent = latent.reset_index(drop=True)

    target = load_target_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    collector = ActivationCollector(target, args.layer, dtype=resolve_dtype("auto", target),
                                    max_length=args.max_length, keep_all=True)
    dictionaries, seconds, frames = [], {}, []
    for name in args.methods.split(","):
        method_class = get_method(name).load()
        if method_class.name == "ixg" and any(d.method == "ig" for d in dictionaries):  # the same head as IG's
            ig = next(d for d in dictionaries if d.method == "ig")
            dictionaries.append(dataclasses.replace(ig, method="ixg", config={**ig.config, "attribution": "ixg"}))
            seconds["ixg"] = seconds["ig"]
            continue
        settings = {"max_length": args.max_length}
        if method_class.name in ("reft-r1", "ssv"):
            settings["num_train_epochs"] = args.lm_epochs
        started = time.perf_counter()
        method = method_class(settings)
        # Share the cached layer-L activations (IG / IxG read their head at the last token's final state instead).
        if isinstance(method, ActivationMethod) and get_method(name).result == "dictionary":
            dictionaries.append(method.fit(target, train, concepts, args.layer, collector=collector))
        else:
            dictionaries.append(method.fit(target, train, concepts, args.layer))
        seconds[method_class.name] = time.perf_counter() - started

    inference_seconds = {}
    for dictionary in dictionaries:  # one method at a time, to time each (the read-outs share one pass otherwise)
        started = time.perf_counter()
        part = latent_inference(target, [dictionary], latent, batch_size=16)
        inference_seconds[dictionary.method] = time.perf_counter() - started
        frames.append(part)
    scores = pd.concat(frames, ignore_index=True)
    summary = summarize_detection(concept_detection(scores), n_resamples=1000).set_index("method")
    print(f"\nConcept10 {args.setting}, SmolLM2-135M-Instruct layer {args.layer}, {len(concepts)} concepts, "
          f"texts ≤ {args.max_length} tokens, LM-trained methods {args.lm_epochs} epoch(s)")
    print(f"{'method':<12} {'AUROC':>6} {'95% CI':>15} {'hard-neg acc':>13} {'fit s':>7} {'score s':>8}")
    rows = []
    for name, row in summary.sort_values("auroc_mean", ascending=False).iterrows():
        print(f"{name:<12} {row['auroc_mean']:6.3f} [{row['auroc_ci_low']:.3f}, {row['auroc_ci_high']:.3f}] "
              f"{row['hard_negative_accuracy_mean']:13.3f} {seconds.get(name, float('nan')):7.1f} "
              f"{inference_seconds.get(name, float('nan')):8.1f}")
        rows.append({"method": name, "auroc_mean": round(float(row["auroc_mean"]), 4),
                     "auroc_ci": [round(float(row["auroc_ci_low"]), 4), round(float(row["auroc_ci_high"]), 4)],
                     "hard_negative_accuracy": round(float(row["hard_negative_accuracy_mean"]), 4),
                     "fit_seconds": round(seconds.get(name, float("nan")), 1),
                     "latent_inference_seconds": round(inference_seconds.get(name, float("nan")), 1)})
    print(f"latent inference ({len(latent)} rows): {sum(inference_seconds.values()):.1f} s in all")
    write_record(args.record, "Concept10 concept detection (mean latent AUROC per method)",
                 {"setting": args.setting, "model": "SmolLM2-135M-Instruct (fp32)", "layer": args.layer,
                  "concepts": len(concepts), "latent_rows": len(latent),
                  "rows_per_category": args.rows_per_category, "train_max_length": args.max_length,
                  "lm_epochs": args.lm_epochs, "methods": rows,
                  "latent_inference_seconds_total": round(sum(inference_seconds.values()), 1)},
                 how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
