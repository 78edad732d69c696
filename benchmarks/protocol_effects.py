"""Measured effect of the protocol fixes of docs/protocol.md on real AxBench Concept10 data (needs ../shared).

SmolLM2-135M-Instruct (embedded) at one layer, AxBench's Concept10 train and latent splits (hard negatives
included). Prints, per method, the detection numbers under the definitions we used before the parity work
(`before`) and under AxBench's evaluator definitions (`now`); for PCA / LAT the AUROC with sklearn's sign
and with the opposite one; and the Probe with its declared gradient accumulation (ours) and with a step per
batch (AxBench's effective run, `probe-reference-steps`). The rows it prints go to the record
benchmarks/results/protocol_effects_concept10.json, which docs/protocol.md shows (`records.py render`).

    python benchmarks/protocol_effects.py --setting prod_2b_l20_v1 --layer 10 --max-length 96
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
import pandas as pd
from concept10_data import load_concept10
from records import Load, record_option, write_record
from sklearn.metrics import precision_recall_curve, roc_curve

from axeval.detection import concept_detection
from axmethods.activations import ActivationCollector, resolve_dtype
from axmethods.inference.latent import latent_inference
from axmethods.models import load_target_model
from axmethods.registry import get_method


def before(rows: pd.DataFrame) -> pd.DataFrame:
    """The earlier definitions: raw scores, Youden ties within 1e-12 to the highest threshold, F1 over pos + neg."""
    records = []
    for (method, concept_id), group in rows.groupby(["method", "concept_id"]):
        category, score = group["category"].to_numpy(), group["score"].to_numpy(float)
        pos, neg, hard = score[category == "positive"], score[category == "negative"], \
            score[category == "hard negative"]
        labels, balanced = np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]
        fpr, tpr, thresholds = roc_curve(labels, balanced)
        youden = tpr - fpr
        threshold = thresholds[np.flatnonzero(np.isclose(youden, youden.max(), rtol=0, atol=1e-12))[0]]
        if not np.isfinite(threshold):
            threshold = np.nan  # no threshold beats chance: no accuracies (as before and as AxBench)
        precision, recall, pr_thresholds = precision_recall_curve(labels, balanced)
        with np.errstate(divide="ignore", invalid="ignore"):
            f1_curve = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        t = pr_thresholds[int(np.argmax(f1_curve[:-1]))]
        predicted = balanced >= t
        tp = float((predicted & (labels == 1)).sum())
        p, r = tp / max(predicted.sum(), 1), tp / labels.sum()
        records.append({"method": method, "concept_id": concept_id,
                        "hard_negative_accuracy": float(np.mean(hard < threshold))
                        if len(hard) and np.isfinite(threshold) else np.nan,
                        "positive_accuracy": float(np.mean(pos >= threshold)) if np.isfinite(threshold) else np.nan,
                        "f1": 2 * p * r / (p + r) if p + r else 0.0})
    table = pd.DataFrame(records)
    table["macro_accuracy"] = (table["positive_accuracy"] + table["hard_negative_accuracy"]) / 2
    return table


METRICS = {"f1": "f1", "hard_negative_accuracy": "hard_neg_acc", "macro_accuracy": "macro_acc"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="prod_2b_l20_v1")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--methods", default="diffmean,pca,lat,probe")
    record_option(parser, "protocol_effects_concept10")
    args = parser.parse_args()
    load, started = Load.now(), time.perf_counter()  # others may share the CPU: the record says how busy it was
    data = load_concept10(args.setting)
    concepts, train, latent = data.concepts, data.train, data.latent
    target = load_target_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    collector = ActivationCollector(target, args.layer, dtype=resolve_dtype("auto", target),
                                    max_length=args.max_length, keep_all=True)
    dictionaries = [get_method(name).load()({"max_length": args.max_length}).fit(target, train, concepts, args.layer,
                                                                            collector=collector)
                    for name in args.methods.split(",")]
    # The Probe as AxBench effectively ran it: an optimiser step per batch (its accumulation ignored).
    reference_probe = get_method("probe").load()({"max_length": args.max_length, "gradient_accumulation_steps": 1}).fit(
        target, train, concepts, args.layer, collector=collector)
    dictionaries.append(dataclasses.replace(reference_probe, method="probe-reference-steps"))
    rows = latent_inference(target, dictionaries, latent, progress=False)
    now, old = concept_detection(rows), before(rows)
    hard_negatives = int((latent["category"] == "hard negative").sum())
    print(f"Concept10 {args.setting}, SmolLM2-135M L{args.layer}, {len(concepts)} concepts, {len(latent)} rows "
          f"({hard_negatives} hard negatives)")
    # One row per method: each metric's mean over concepts before → now, and how many concepts it changed.
    table = pd.DataFrame(index=pd.Index([d.method for d in dictionaries], name="method"))
    for metric, short in METRICS.items():
        a, b = now.set_index(["method", "concept_id"])[metric], old.set_index(["method", "concept_id"])[metric]
        changed = ((a - b).abs().gt(1e-12) | (a.isna() != b.isna())).groupby("method").sum()
        table[f"{short}_before"] = b.groupby("method").mean()
        table[f"{short}_now"] = a.groupby("method").mean()
        table[f"{short}_changed"] = changed.astype(int)
    table["auroc"] = now.groupby("method")["auroc"].mean()  # unchanged by the metric fixes
    # PCA / LAT: a raw eigenvector has either sign, per concept; the AUROC with every direction negated.
    table["auroc_negated"] = np.nan
    for method in ("pca", "lat"):
        if method in table.index:
            flipped_rows = rows[rows["method"] == method].assign(score=lambda f: -f["score"])
            table.loc[method, "auroc_negated"] = concept_detection(flipped_rows)["auroc"].mean()
    print("\nper method, mean over concepts (before: the earlier definitions; now: AxBench's; changed: concepts "
          f"whose value changed):\n{table.round(4).to_string()}")
    results = [{"method": method, **{k: (None if pd.isna(v) else int(v) if k.endswith("_changed") else
                                         round(float(v), 4)) for k, v in row.items()}}
               for method, row in table.iterrows()]
    write_record(args.record, "Protocol fixes on Concept10: detection before → now (AxBench's definitions), "
                 "PCA/LAT sign, Probe schedule",
                 {"setting": args.setting, "model": "SmolLM2-135M-Instruct (fp32)", "layer": args.layer,
                  "max_length": args.max_length, "concepts": len(concepts), "latent_rows": len(latent),
                  "hard_negatives": hard_negatives, "wall_seconds": round(time.perf_counter() - started, 1),
                  "methods": results},
                 how="python " + " ".join(sys.argv), load=load,
                 notes=["before: raw scores, Youden ties within 1e-12 to the highest threshold, F1 over positives "
                        "and negatives; now: AxBench's evaluator (axeval.detection); *_changed: concepts (of "
                        f"{len(concepts)}) whose value differs",
                        "probe: gradient accumulation honoured (ours); probe-reference-steps: an optimiser step "
                        "per batch (AxBench's effective run, `protocol: reference`)",
                        "auroc_negated: PCA / LAT's mean AUROC with every concept's direction negated"])


if __name__ == "__main__":
    main()
