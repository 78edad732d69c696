"""Measured effect of the protocol fixes of docs/protocol.md on real AxBench Concept10 data (needs ../shared).

SmolLM2-135M-Instruct (embedded) at one layer, AxBench's Concept10 train and latent splits (hard negatives
included). Prints, per method, the detection numbers under the definitions we used before the parity work
(`before`) and under AxBench's evaluator definitions (`now`); for PCA / LAT the AUROC with sklearn's sign
and with the opposite one; and the Probe with its declared gradient accumulation (ours) and with a step per
batch (AxBench's effective run, `probe-reference-steps`).

    python benchmarks/protocol_effects.py --setting prod_2b_l20_v1 --layer 10 --max-length 96
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pandas as pd
from concept10_data import load_concept10
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="prod_2b_l20_v1")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--methods", default="diffmean,pca,lat,probe")
    args = parser.parse_args()
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
    print(f"Concept10 {args.setting}, SmolLM2-135M L{args.layer}, {len(concepts)} concepts, {len(latent)} rows "
          f"({int((latent['category'] == 'hard negative').sum())} hard negatives)")
    for metric in ("f1", "hard_negative_accuracy", "macro_accuracy"):
        joined = now.groupby("method")[metric].mean().rename("now").to_frame().join(
            old.groupby("method")[metric].mean().rename("before"))
        a, b = now.set_index(["method", "concept_id"])[metric], old.set_index(["method", "concept_id"])[metric]
        changed = ((a - b).abs().gt(1e-12) | (a.isna() != b.isna())).groupby("method").sum()
        print(f"\n{metric} (mean over concepts), concepts that changed:\n"
              f"{joined.assign(changed=changed).round(4).to_string()}")
    auroc = now.groupby("method")["auroc"].mean()
    print(f"\nmean AUROC (unchanged by the metric fixes):\n{auroc.round(4).to_string()}")
    for dictionary in dictionaries:
        if dictionary.method in ("pca", "lat"):
            flipped_rows = rows[rows["method"] == dictionary.method].assign(score=lambda f: -f["score"])
            flipped = concept_detection(flipped_rows)["auroc"].mean()
            print(f"\n{dictionary.method}: AUROC with sklearn's sign {auroc[dictionary.method]:.4f}; with every "
                  f"direction negated {flipped:.4f} (a raw eigenvector has either sign, per concept)")


if __name__ == "__main__":
    main()
