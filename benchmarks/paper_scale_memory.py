"""Peak memory of DiffMean training and latent inference at Concept500 scale, from data on disk.

Synthesises paper-sized splits in the project's dataset layout (`axdata.builders`: one parquet shard per
split + concepts.jsonl), per concept count N:
  train             72 positives per concept + 72 shared negatives per genre (Concept500: 36,216 rows)
  latent            36 positives + 36 negatives + 8 hard negatives per concept (Concept500: ~40k rows)
  latent_imbalance  a pool of 36 × 100 shared negatives (our generator's default), scored by every concept
Texts are random words with the paper's lengths (spec §6.4: ≈17-token inputs, ≈100-token outputs; the tiny
tokenizer spends ≈1.25 tokens per word: 14 / 80 words ≈ 18 / 100 tokens). The target model is a tiny random Llama (hidden 64, 2 layers;
`--hidden/--layers` widen it): the point is the memory of our data handling, not model compute.

Each stage runs in a fresh subprocess (the way `axbench run` does the same work) and reports its peak
resident set (VmHWM, per process), its resident set after imports + model load (the floor), and its time:
  diffmean          read train split → DiffMean.fit (all concepts) → dictionary saved
  latent            read latent split → latent scores of every row for its own concept → latent.parquet
  latent_imbalance  read the pool + positives → every concept scored on the pool → latent_imbalance.parquet

    .venv/bin/python benchmarks/paper_scale_memory.py                  # N = 50 and 500, about 5 minutes
    .venv/bin/python benchmarks/paper_scale_memory.py --concepts 20 --imbalance-pool 100   # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CONFIG = "synthetic-l1"
LAYER = 1
GENRES = ("text", "code", "math")
WORDS = ("the quick brown fox jumps over the lazy dog write a short poem about sea and sky explain how "
         "photosynthesis works in plants step by what is capital of France Paris Golden Gate Bridge San "
         "Francisco California United States America def add return numbers punctuation hello world apple "
         "zebra instruction response user model assistant system").split()


def rss_kib(field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of this process, KiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def synthesise(out: Path, n_concepts: int, args: argparse.Namespace) -> dict[str, int]:
    """Write train / latent / latent_imbalance splits and concepts.jsonl for `n_concepts` under `out`."""
    import pandas as pd

    from axdata.builders import write_concepts, write_split
    from axdata.concepts import Concept
    from axdata.schema import EMPTY_CONCEPT, SHARED_NEGATIVE_ID, table_from_frame

    rng = random.Random(n_concepts)
    concepts = [Concept(i, f"concept number {i}", genres=(GENRES[i % 3],)) for i in range(n_concepts)]

    def row(concept_id: int, concept: str, genre: str, category: str) -> dict[str, Any]:
        return {"input": sentence(rng, args.input_words), "output": sentence(rng, args.output_words),
                "output_concept": concept, "concept_genre": genre, "category": category,
                "dataset_category": "instruction", "concept_id": concept_id}

    train = [row(c.concept_id, c.concept, c.genre, "positive") for c in concepts for _ in range(args.train_positives)]
    train += [row(SHARED_NEGATIVE_ID, EMPTY_CONCEPT, genre, "negative") for genre in GENRES
              for _ in range(args.train_positives)]
    latent = [row(c.concept_id, c.concept if category == "positive" else EMPTY_CONCEPT, c.genre, category)
              for c in concepts
              for category, count in (("positive", args.latent_examples), ("negative", args.latent_examples),
                                          ("hard negative", args.hard_negatives))
              for _ in range(count)]
    pool = [row(SHARED_NEGATIVE_ID, EMPTY_CONCEPT, GENRES[i % 3], "negative") for i in range(args.imbalance_pool)]
    sizes = {}
    for split, rows in (("train", train), ("latent", latent), ("latent_imbalance", pool)):
        write_split(table_from_frame(pd.DataFrame(rows), split), out, CONFIG, split)
        sizes[split] = len(rows)
    write_concepts(concepts, out, CONFIG)
    return sizes


def build_model(directory: Path, hidden: int, layers: int) -> Path:
    import torch
    from fixtures_models import build_tiny_model
    from transformers import AutoConfig, AutoModelForCausalLM

    build_tiny_model(directory, "llama")
    if (hidden, layers) != (64, 2):
        config = AutoConfig.from_pretrained(directory)
        config.update({"hidden_size": hidden, "intermediate_size": hidden * 8 // 3, "num_hidden_layers": layers,
                       "head_dim": 64, "num_attention_heads": max(1, hidden // 64),
                       "num_key_value_heads": max(1, hidden // 192)})
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(directory)
    return directory


def run_stage(stage: str, data: Path, model: Path, out: Path, batch_size: int) -> dict[str, Any]:
    """One stage, in this (fresh) process; returns seconds and RSS figures."""
    from axdata.builders import read_concepts, read_split
    from axmethods.models import load_target_model

    target = load_target_model(str(model), device="cpu", dtype="float32")
    floor = rss_kib("VmRSS")
    t0 = time.perf_counter()
    if stage == "diffmean":
        from axmethods.methods.diffmean import DiffMean

        dictionary = DiffMean({"activation_dtype": "float32", "activation_batch_size": batch_size}).fit(
            target, read_split(data, CONFIG, "train"), read_concepts(data, CONFIG), LAYER)
        dictionary.save_pretrained(out / "diffmean")
        rows = dictionary.n_concepts
    else:
        from axmethods.inference import latent as inference
        from axmethods.results import load_result

        dictionary = load_result(out / "diffmean", layer=LAYER)
        latent = read_split(data, CONFIG, "latent")
        pool = read_split(data, CONFIG, "latent_imbalance") if stage == "latent_imbalance" else None
        path = out / f"{stage}.parquet"
        if stage == "latent_imbalance" and hasattr(inference, "write_latent_inference"):
            # What the latent stage does for this mode: written part by part, never held whole.
            rows = inference.write_latent_inference(path, target, [dictionary], latent, mode=stage,
                                                    imbalance_pool=pool, batch_size=batch_size, progress=False)["rows"]
        else:  # `latent` mode (the stage keeps the frame: calibration reads it); or code before streaming
            frame = inference.latent_inference(target, [dictionary], latent, mode=stage, imbalance_pool=pool,
                                               batch_size=batch_size, progress=False)
            frame.to_parquet(path, index=False)
            rows = len(frame)
    return {"stage": stage, "seconds": time.perf_counter() - t0, "rows": rows,
            "floor_mib": floor / 1024, "peak_mib": rss_kib("VmHWM") / 1024}


def main() -> None:
    # The script's folder is on the path when it runs as a script; tests import this module for its helpers.
    from records import Load, record_option, write_record

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--train-positives", type=int, default=72)
    parser.add_argument("--latent-examples", type=int, default=36, help="latent positives (and negatives) per concept")
    parser.add_argument("--hard-negatives", type=int, default=8)
    parser.add_argument("--imbalance-pool", type=int, default=3600)
    parser.add_argument("--input-words", type=int, default=14)
    parser.add_argument("--output-words", type=int, default=80)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--stages", nargs="+", default=["diffmean", "latent", "latent_imbalance"])
    parser.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    record_option(parser, "paper_scale_memory")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.data, args.model, args.out, args.batch_size)))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load = Load.now()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        model = build_model(work / "model", args.hidden, args.layers)
        results = []
        for n in args.concepts:
            data, out = work / f"data-{n}", work / f"out-{n}"
            out.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            sizes = synthesise(data, n, args)
            print(f"N={n}: synthesised {sizes} in {time.perf_counter() - t0:.1f} s", flush=True)
            for stage in args.stages:
                command = [sys.executable, __file__, "--stage", stage, "--data", str(data), "--model", str(model),
                           "--out", str(out), "--batch-size", str(args.batch_size)]
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                result = {"concepts": n, **sizes, **json.loads(done.stdout.strip().splitlines()[-1])}
                results.append(result)
                print(f"  {stage:17s} {result['seconds']:7.1f} s  peak {result['peak_mib']:7.0f} MiB  "
                      f"(floor {result['floor_mib']:.0f} MiB, +{result['peak_mib'] - result['floor_mib']:.0f})  "
                      f"{result['rows']} rows", flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores; load {os.getloadavg()}")
    print("| concepts | stage | rows out | time (s) | peak RSS (MiB) | floor (MiB) | peak − floor (MiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['concepts']} | {r['stage']} | {r['rows']:,} | {r['seconds']:.1f} | {r['peak_mib']:.0f} | "
              f"{r['floor_mib']:.0f} | {r['peak_mib'] - r['floor_mib']:.0f} |")
    write_record(args.record, "peak RSS and time per stage (each in a fresh process) at Concept500-like "
                 "data sizes", {"hidden": args.hidden, "layers": args.layers, "input_words": args.input_words,
                                "output_words": args.output_words, "stages": results},
                 how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
