"""Latent scoring: one pass for all concepts (ours) vs an AxBench-style per-concept loop.

Ours: every eval row in length-sorted batches, the forward stopped after layer L, one matmul against the
whole [n, d] dictionary. Baseline (AxBench §4.1): for each concept, its own rows in batches of 16, a full
forward (all layers + lm_head) reading layer L with a hook, scored against that concept's row.
Both modes are measured: `latent` (each row for its own concept) and `latent_imbalance` (a shared
pool scored for every concept; the baseline is timed on --imbalance-sample concepts and extrapolated).

    python benchmarks/bench_latent.py --concepts 500 --rows 2 --layers 30 --hidden 576 --dtype bfloat16
    python benchmarks/bench_latent.py --concepts 500 --rows 1 --words 16 --pool 16 --loop-sample 25 \
        --imbalance-sample 3 --dtype float32      # CPU, a few minutes: the loops are timed on a sample

`--loop-sample K` times the `latent`-mode per-concept loop on the first K concepts only and extrapolates it
linearly to all concepts (each concept costs the same in that loop: its own rows, its own forwards); the
output says so. The one-pass path always scores every concept.

The model is random-initialised from a config (SmolLM2-135M-shaped by default, or Gemma-2-2B-shaped
with --gemma2-2b), so no download is needed; the tokenizer is the tiny test tokenizer.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures_models import build_tiny_model
from records import Load, record_option, write_record

from axdata.concepts import Concept
from axmethods.dictionary import SteeringDictionary
from axmethods.inference.latent import score_texts
from axmethods.models import load_target_model, pad_batch, pad_token_id

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "sea", "sky", "poem", "plants", "capital", "France", "Paris", "bridge", "numbers"]


def build_model(directory: Path, args: argparse.Namespace) -> Path:
    import json

    build_tiny_model(directory, "gemma2" if args.gemma2_2b else "llama")
    config = json.loads((directory / "config.json").read_text())
    if args.gemma2_2b:
        config.update(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=4096)
    else:
        config.update(hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3, num_hidden_layers=args.layers,
                      num_attention_heads=9 if args.hidden == 576 else 8, num_key_value_heads=3 if args.hidden == 576 else 4,
                      head_dim=64)
    for name in ("model.safetensors",):
        (directory / name).unlink()
    (directory / "config.json").write_text(json.dumps(config))
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
    model.save_pretrained(directory)
    return directory


def axbench_loop(target, dictionary, texts_by_concept, rows_for, batch_size=16):
    layer, prefix = dictionary.layer, target.prefix_length
    captured = {}
    handle = target.residual_module(layer).register_forward_hook(lambda m, a, o: captured.update(h=o))
    results = []
    try:
        with torch.inference_mode():
            for row, concept in enumerate(dictionary.concepts):
                w = dictionary.weight[row].to(target.device, target.dtype)
                texts = rows_for(concept.concept_id)
                for start in range(0, len(texts), batch_size):
                    ids, mask = pad_batch([target.encode(t) for t in texts[start:start + batch_size]],
                                          pad_token_id(target))
                    target.model(input_ids=ids.to(target.device), attention_mask=mask.to(target.device))
                    scores = (captured["h"] @ w).float()
                    valid = mask.bool().to(target.device) & (torch.arange(ids.shape[1], device=target.device) >= prefix)
                    results.append(scores.masked_fill(~valid, float("-inf")).max(dim=1).values.cpu())
    finally:
        handle.remove()
    return results


def sync(target) -> None:
    if target.device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", type=int, default=500, help="dictionary size (e.g. 500: Concept500)")
    parser.add_argument("--rows", type=int, default=2, help="latent rows per concept")
    parser.add_argument("--pool", type=int, default=64, help="latent_imbalance pool size")
    parser.add_argument("--imbalance-sample", type=int, default=10, help="concepts timed for the baseline's pool loop")
    parser.add_argument("--loop-sample", type=int, default=None,
                        help="concepts timed for the latent-mode per-concept loop, extrapolated (default: all)")
    parser.add_argument("--words", type=int, default=40, help="words per text (≈ tokens)")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--layer", type=int, default=None, help="read layer (default: the middle one)")
    parser.add_argument("--gemma2-2b", action="store_true")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    record_option(parser, "bench_latent")
    args = parser.parse_args()
    load = Load.now()
    torch.manual_seed(0)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        target = load_target_model(str(build_model(Path(tmp) / "model", args)), dtype=args.dtype, device=args.device)
    layer = args.layer if args.layer is not None else target.num_layers // 2
    concepts = [Concept(i, f"concept {i}") for i in range(args.concepts)]
    dictionary = SteeringDictionary(torch.randn(args.concepts, target.hidden_size), concepts, layer,
                                    target.residual_module_path(layer), "random", "DiffMean")

    def text() -> str:
        n = rng.randint(args.words // 2, args.words)
        return target.format_transcript(" ".join(rng.choices(WORDS, k=n // 2)), " ".join(rng.choices(WORDS, k=n - n // 2)))

    texts = {c.concept_id: [text() for _ in range(args.rows)] for c in concepts}
    pool = [text() for _ in range(args.pool)]
    flat = [t for c in concepts for t in texts[c.concept_id]]
    tokens = sum(len(target.encode(t)) for t in flat)
    print(f"device {target.device} ({torch.cuda.get_device_name() if target.device.type == 'cuda' else platform.processor() or 'cpu'}, "
          f"{torch.get_num_threads()} threads), dtype {target.dtype}, model d={target.hidden_size} x {target.num_layers} "
          f"layers, read layer {layer}, {args.concepts} concepts x {args.rows} rows = {len(flat)} texts, {tokens} tokens", flush=True)

    score_texts(target, [dictionary], flat[: args.batch_size], batch_size=args.batch_size, progress=False)  # warm-up
    sync(target)
    start = time.perf_counter()
    score_texts(target, [dictionary], flat, batch_size=args.batch_size, progress=False)
    sync(target)
    ours = time.perf_counter() - start
    loop_sample = min(args.loop_sample or args.concepts, args.concepts)
    looped = dictionary.__class__(dictionary.weight[:loop_sample], concepts[:loop_sample], layer,
                                  dictionary.hook_module, "random", "DiffMean")
    start = time.perf_counter()
    axbench_loop(target, looped, texts, lambda cid: texts[cid], args.batch_size)
    sync(target)
    baseline = (time.perf_counter() - start) * args.concepts / loop_sample
    note = "" if loop_sample == args.concepts else f" (extrapolated from {loop_sample} concepts)"
    runs = [{"mode": "latent", "one pass (s)": round(ours, 2), "per-concept loop (s)": round(baseline, 2),
             "loop timed on concepts": loop_sample, "speed-up": round(baseline / ours, 1)}]
    print(f"latent:           one pass {ours:8.2f} s ({tokens / ours:8.0f} tok/s) | per-concept loop {baseline:8.2f} s"
          f"{note} ({tokens / baseline:8.0f} tok/s) | speed-up {baseline / ours:6.1f}x", flush=True)

    sample = dictionary.__class__(dictionary.weight[: args.imbalance_sample], concepts[: args.imbalance_sample], layer,
                                  dictionary.hook_module, "random", "DiffMean")
    sync(target)
    start = time.perf_counter()
    score_texts(target, [dictionary], pool, batch_size=args.batch_size, progress=False)
    sync(target)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    axbench_loop(target, sample, None, lambda cid: pool, args.batch_size)
    sync(target)
    baseline = (time.perf_counter() - start) * args.concepts / args.imbalance_sample
    print(f"latent_imbalance: one pass {ours:8.2f} s | per-concept loop {baseline:8.2f} s (extrapolated from "
          f"{args.imbalance_sample} concepts) | speed-up {baseline / ours:6.1f}x  ({args.pool}-text pool x {args.concepts} concepts)")
    runs.append({"mode": "latent_imbalance", "one pass (s)": round(ours, 2),
                 "per-concept loop (s)": round(baseline, 2), "loop timed on concepts": args.imbalance_sample,
                 "speed-up": round(baseline / ours, 1)})
    write_record(args.record, "latent scoring: one pass for all concepts vs an AxBench-style per-concept "
                 "loop (loops timed on a sample of concepts are extrapolated linearly)",
                 {"device": str(target.device), "dtype": str(target.dtype), "hidden": target.hidden_size,
                  "layers": target.num_layers, "read_layer": layer, "concepts": args.concepts,
                  "texts": len(flat), "tokens": tokens, "pool": args.pool, "runs": runs},
                 how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
