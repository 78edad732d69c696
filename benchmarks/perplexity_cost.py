"""What the steering stage's perplexity costs: `run_steering` with and without the extra forward per batch.

The perplexity of each generation under the unsteered model (`axmethods.inference.perplexity`) is one forward of
prompt + generation per batch, after the batch is decoded. This runs the same rows (same seeds, so the same
tokens) through `run_steering` with it, and with it replaced by a no-op, alternating A/B/A/B so a drifting load
hits both; the ratio is of the summed times. Random-initialised SmolLM2-135M shape (no weights needed).

    python benchmarks/perplexity_cost.py                      # CPU, fp32
    python benchmarks/perplexity_cost.py --device cuda --batch-size 128 --concepts 32
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_latent import WORDS, build_model
from records import Load, write_record

from axdata.concepts import Concept
from axmethods.dictionary import SteeringDictionary
from axmethods.inference import steering as steering_module
from axmethods.inference.sampling import SamplingConfig
from axmethods.inference.steering import DictionarySteerer, run_steering
from axmethods.models import load_target_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concepts", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--factors", default="0.5,1,2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="A/B pairs")
    args = parser.parse_args()
    load = Load.now()
    torch.manual_seed(0)
    rng = random.Random(0)
    shape = argparse.Namespace(gemma2_2b=False, hidden=576, layers=30)
    with tempfile.TemporaryDirectory() as tmp:
        target = load_target_model(str(build_model(Path(tmp) / "model", shape)), device=args.device,
                                   dtype="bfloat16" if args.device.startswith("cuda") else "float32")
    target.model.resize_token_embeddings(49_152)
    target.model.to(target.device, target.dtype)
    layer = target.num_layers // 2
    concepts = [Concept(i, f"concept {i}") for i in range(args.concepts)]
    dictionary = SteeringDictionary(torch.nn.functional.normalize(torch.randn(args.concepts, target.hidden_size), dim=-1),
                                    concepts, layer, target.residual_module_path(layer), target.model_id, "DiffMean",
                                    calibration=torch.full((args.concepts,), 4.0))
    split = pd.DataFrame([{"dataset_name": "bench", "concept_id": c, "input_concept": f"concept {c}", "input_id": p,
                           "original_prompt": " ".join(rng.choices(WORDS, k=rng.randint(6, 16))),
                           "half": "selection"} for c in range(args.concepts) for p in range(args.prompts)])
    factors = [float(f) for f in args.factors.split(",")]
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=1.0)
    real = steering_module.generation_perplexity

    def run(with_perplexity: bool) -> tuple[float, pd.DataFrame]:
        steering_module.generation_perplexity = real if with_perplexity else (
            lambda _target, prompts, *_a, **_k: np.full(len(prompts), np.nan))
        try:
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                frame = run_steering(target, DictionarySteerer(dictionary), split, Path(tmp) / "s.parquet",
                                     factors=factors, sampling=sampling, batch_size=args.batch_size, seed=42,
                                     progress=False)
                if target.device.type == "cuda":
                    torch.cuda.synchronize()
                return time.perf_counter() - started, frame
        finally:
            steering_module.generation_perplexity = real

    run(False)  # warm-up
    times = {"with": [], "without": []}
    for _ in range(args.repeats):
        for name in ("without", "with"):
            seconds, frame = run(name == "with")
            times[name].append(seconds)
    ratio = sum(times["with"]) / sum(times["without"])
    print(f"{len(frame)} rows, batch {args.batch_size}, {args.max_new_tokens} new tokens: without perplexity "
          f"{times['without']} s, with {times['with']} s -> {ratio:.3f}x ({100 * (ratio - 1):+.1f}%)")
    write_record("perplexity_cost", "steering stage time with the perplexity forward / without it",
                 {"rows": len(frame), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                  "device": str(target.device), "dtype": str(target.dtype), "seconds_without": times["without"],
                  "seconds_with": times["with"], "ratio": round(ratio, 4)},
                 how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
