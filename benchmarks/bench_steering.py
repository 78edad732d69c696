"""Steered generation tokens/s: heterogeneous batches (ours) vs an AxBench-style loop vs unsteered generation.

- ours: `run_steering` with a `DictionarySteerer` — every (concept, prompt, factor) row of the steering split in
  batches of --batch-size, rows of different concepts and factors sharing a batch (one `RowSteering` per batch);
  the stage's perplexity forward is switched off here (the three variants compare decoding; what perplexity
  adds is `benchmarks/perplexity_cost.py`'s record);
- AxBench-style (§4.4): one concept at a time, its (prompt, factor) rows in batches of 10, a fresh steering hook
  installed for every concept (AxBench built a new intervenable model per concept);
- unsteered: the same rows through `sampling.sample` at the same batch size with no hook at all.
All three sample the same rows with the same per-row seeds (temperature 1.0) and --max-new-tokens; tokens/s counts
the generated tokens (up to each row's end of turn). Ratios are against baselines measured in the same run.

    python benchmarks/bench_steering.py                                     # CPU, SmolLM2-135M shape, fp32
    python benchmarks/bench_steering.py --device cuda --shape gemma-2-2b --dtype bfloat16 \\
        --concepts 64 --prompts 4 --factors 0.5,1,2,4 --batch-size 256 --max-new-tokens 128

The model is random-initialised from a config (no weights needed); the tokenizer is the tiny test tokenizer.
"""

from __future__ import annotations

import argparse
import platform
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
from records import Load, record_option, write_record

from axdata.concepts import Concept
from axmethods.dictionary import SteeringDictionary
from axmethods.inference import steering as steering_module
from axmethods.inference.sampling import SamplingConfig, sample
from axmethods.inference.steering import DictionarySteerer, plan_rows, run_steering
from axmethods.interventions import RowSteering, steering_hooks
from axmethods.models import load_target_model

SHAPES = ("smollm2-135m", "gemma-2-2b")


def sync(target) -> None:
    if target.device.type == "cuda":
        torch.cuda.synchronize()


def timed(target, fn):
    sync(target)
    start = time.perf_counter()
    result = fn()
    sync(target)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--concepts", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per concept")
    parser.add_argument("--factors", default="0.5,1,2", help="comma-separated steering factors")
    parser.add_argument("--batch-size", type=int, default=32, help="ours and unsteered")
    parser.add_argument("--axbench-batch-size", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--layer", type=int, default=None, help="steered layer (default: the middle one)")
    record_option(parser, "bench_steering")
    args = parser.parse_args()
    load = Load.now()
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    factors = [float(f) for f in args.factors.split(",")]
    torch.manual_seed(0)
    rng = random.Random(0)
    shape = argparse.Namespace(gemma2_2b=args.shape == "gemma-2-2b", hidden=576, layers=30)
    with tempfile.TemporaryDirectory() as tmp:
        target = load_target_model(str(build_model(Path(tmp) / "model", shape)), dtype=dtype, device=args.device)
    # build_model keeps the tiny tokenizer's vocabulary size; SmolLM2 / Gemma-2 have 49,152 / 256,000 ids, which
    # matters for the lm_head and the sampler: resize the (random) embeddings to the real vocabulary.
    vocab = 256_000 if shape.gemma2_2b else 49_152
    target.model.resize_token_embeddings(vocab)
    target.model.to(target.device, target.dtype)
    layer = args.layer if args.layer is not None else target.num_layers // 2
    concepts = [Concept(i, f"concept {i}") for i in range(args.concepts)]
    dictionary = SteeringDictionary(torch.nn.functional.normalize(torch.randn(args.concepts, target.hidden_size), dim=-1),
                                    concepts, layer, target.residual_module_path(layer), target.model_id, "DiffMean",
                                    calibration=torch.full((args.concepts,), 4.0))
    split = pd.DataFrame([{"dataset_name": "bench", "concept_id": c, "input_concept": f"concept {c}", "input_id": p,
                           "original_prompt": " ".join(rng.choices(WORDS, k=rng.randint(6, 16))),
                           "half": "selection"} for c in range(args.concepts) for p in range(args.prompts)])
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=1.0)
    steerer = DictionarySteerer(dictionary)
    rows = plan_rows(split, steerer, target, factors, seed=42)
    prompt_ids = [target.encode(p) for p in rows["prompt"]]
    device_name = torch.cuda.get_device_name() if target.device.type == "cuda" else (platform.processor() or "cpu")
    print(f"device {target.device} ({device_name}, {torch.get_num_threads()} threads), dtype {target.dtype}, "
          f"{args.shape} shape: d={target.hidden_size} x {target.num_layers} layers, vocab {vocab}, steered layer {layer}; "
          f"{args.concepts} concepts x {args.prompts} prompts x {len(factors)} factors = {len(rows)} rows, "
          f"{args.max_new_tokens} new tokens (temperature 1.0)", flush=True)

    sample(target, prompt_ids[:2], [0, 1], SamplingConfig(max_new_tokens=2))  # warm-up

    # Ours: heterogeneous batches through the real steering runner (parquet parts included); its sampler is
    # wrapped only to count the generated ids.
    counted = []

    def counting_sample(*a, **k):
        tokens = sample(*a, **k)
        counted.append(sum(map(len, tokens)))
        return tokens

    steering_module.sample = counting_sample
    real_perplexity = steering_module.generation_perplexity
    steering_module.generation_perplexity = lambda _target, prompts, *_a, **_k: np.full(len(prompts), np.nan)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _, ours = timed(target, lambda: run_steering(target, steerer, split, Path(tmp) / "steer.parquet",
                                                         factors=factors, sampling=sampling,
                                                         batch_size=args.batch_size, seed=42, progress=False))
    finally:
        steering_module.sample = sample
        steering_module.generation_perplexity = real_perplexity
    ours_tokens = sum(counted)

    def unsteered() -> int:
        order = sorted(range(len(rows)), key=lambda i: (-len(prompt_ids[i]), i))
        total = 0
        for start in range(0, len(order), args.batch_size):
            batch = order[start:start + args.batch_size]
            total += sum(map(len, sample(target, [prompt_ids[i] for i in batch],
                                         rows["seed"].iloc[batch].tolist(), sampling)))
        return total

    def axbench() -> int:
        total = 0
        for concept in concepts:
            mine = rows.index[rows["concept_id"] == concept.concept_id].tolist()
            for start in range(0, len(mine), args.axbench_batch_size):
                batch = mine[start:start + args.axbench_batch_size]
                steering = RowSteering.from_dictionary(dictionary, rows["concept_id"].iloc[batch].tolist(),
                                                       rows["factor"].iloc[batch].tolist())
                with steering_hooks(target, layer, steering):  # a fresh hook per concept batch
                    total += sum(map(len, sample(target, [prompt_ids[i] for i in batch],
                                                 rows["seed"].iloc[batch].tolist(), sampling)))
        return total

    plain_tokens, plain = timed(target, unsteered)
    axbench_tokens, loop = timed(target, axbench)
    ours_rate, plain_rate, loop_rate = ours_tokens / ours, plain_tokens / plain, axbench_tokens / loop
    print(f"heterogeneous batches (batch {args.batch_size}): {ours:7.2f} s, {ours_tokens} tokens, {ours_rate:8.1f} tok/s")
    print(f"AxBench-style loop (batch {args.axbench_batch_size}, hook per concept): {loop:7.2f} s, {axbench_tokens} tokens, "
          f"{loop_rate:8.1f} tok/s")
    print(f"unsteered (batch {args.batch_size}): {plain:7.2f} s, {plain_tokens} tokens, {plain_rate:8.1f} tok/s")
    print(f"ratios: heterogeneous / AxBench-style = {ours_rate / loop_rate:.2f}x; "
          f"heterogeneous / unsteered = {ours_rate / plain_rate:.2f} (steered overhead {100 * (1 - ours_rate / plain_rate):+.1f}%)")
    runs = [("heterogeneous batches", args.batch_size, ours, ours_tokens),
            ("AxBench-style loop (hook per concept)", args.axbench_batch_size, loop, axbench_tokens),
            ("unsteered", args.batch_size, plain, plain_tokens)]
    write_record(args.record, "steered generation tokens/s: heterogeneous batches vs an AxBench-style loop "
                 "vs unsteered",
                 {"device": f"{target.device} ({device_name})", "dtype": str(target.dtype),
                  "shape": args.shape, "steered_layer": layer, "rows": len(rows),
                  "max_new_tokens": args.max_new_tokens,
                  "runs": [{"run": name, "batch": batch, "seconds": round(seconds, 2), "tokens": tokens,
                            "tokens/s": round(tokens / seconds, 1)} for name, batch, seconds, tokens in runs],
                  "heterogeneous / AxBench-style": round(ours_rate / loop_rate, 2),
                  "heterogeneous / unsteered": round(ours_rate / plain_rate, 2)},
                 how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
