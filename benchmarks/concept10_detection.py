"""Concept detection on the real AxBench Concept10 data with the embedded SmolLM2: every method's AUROC.

The toolkit's own path end to end: import (axdata) → fit (axmethods.methods) → one-pass latent inference
(axmethods.inference) → per-concept AUROC with a bootstrap CI (axeval.detection). Needs ../shared.

    python benchmarks/concept10_detection.py --concepts 5 --layer 10 --max-length 96
"""

from __future__ import annotations

import argparse
import time

from concept10_data import load_concept10

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
    args = parser.parse_args()

    data = load_concept10(args.setting)
    concepts = data.concepts[: args.concepts]
    ids = {c.concept_id for c in concepts}
    train, latent = data.train, data.latent
    latent = latent[latent["concept_id"].isin(ids)].reset_index(drop=True)

    target = load_target_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    collector = ActivationCollector(target, args.layer, dtype=resolve_dtype("auto", target),
                                    max_length=args.max_length, keep_all=True)
    dictionaries, seconds = [], {}
    for name in args.methods.split(","):
        method_class = get_method(name).load()
        settings = {"max_length": args.max_length}
        if method_class.name in ("reft-r1", "ssv"):
            settings["num_train_epochs"] = args.lm_epochs
        started = time.perf_counter()
        method = method_class(settings)
        if isinstance(method, ActivationMethod):  # share the cached activations
            dictionaries.append(method.fit(target, train, concepts, args.layer, collector=collector))
        else:
            dictionaries.append(method.fit(target, train, concepts, args.layer))
        seconds[method_class.name] = time.perf_counter() - started

    started = time.perf_counter()
    scores = latent_inference(target, dictionaries, latent, batch_size=16)
    inference_seconds = time.perf_counter() - started
    summary = summarize_detection(concept_detection(scores), n_resamples=1000).set_index("method")
    print(f"\nConcept10 {args.setting}, SmolLM2-135M-Instruct layer {args.layer}, {len(concepts)} concepts, "
          f"texts ≤ {args.max_length} tokens, LM-trained methods {args.lm_epochs} epoch(s)")
    print(f"{'method':<12} {'AUROC':>6} {'95% CI':>15} {'hard-neg acc':>13} {'fit s':>7}")
    for name, row in summary.sort_values("auroc_mean", ascending=False).iterrows():
        print(f"{name:<12} {row['auroc_mean']:6.3f} [{row['auroc_ci_low']:.3f}, {row['auroc_ci_high']:.3f}] "
              f"{row['hard_negative_accuracy_mean']:13.3f} {seconds.get(name, float('nan')):7.1f}")
    print(f"latent inference (all methods, {len(latent)} rows): {inference_seconds:.1f} s")


if __name__ == "__main__":
    main()
