"""RePS training: one run over many concepts (one parameter matrix, per-row concept index) vs one run per concept.

Both variants train the same concepts on the same pairs for the same number of epochs with the same per-concept
batch size, so they make the same number of optimiser updates per concept:
- joint: one `RePSTrainer` over all --concepts (every micro-batch holds --batch pairs of every concept);
- loop:  one `RePSTrainer` per concept (AxBench's way: a fresh intervention and training loop per concept).
Reported: wall time, optimiser steps/s, concept-updates/s (optimiser steps × concepts they update, per second;
the figure to compare, since a joint step updates every concept), and peak memory — each variant
runs in its own subprocess so its peak RSS (CPU) or `torch.cuda.max_memory_allocated` (GPU) is its own.

    python benchmarks/bench_trainers.py                                   # CPU, a 6-layer d=256 random model
    python benchmarks/bench_trainers.py --device cuda --gemma2-2b --dtype bfloat16 --concepts 32 --pairs 24

The model is random-initialised from a config (speed does not depend on weight values); the tokenizer is the
tiny test tokenizer; responses are random words of --response-words words.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_latent import WORDS, build_model
from records import Load, record_option, write_record

from axdata.concepts import Concept
from axmethods.models import load_target_model
from axmethods.trainers import RePSConfig
from axmethods.trainers.reps_trainer import RePSTrainer


def pairs_frame(n_concepts: int, pairs: int, response_words: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    return pd.DataFrame([{"input": text(12), "winning_output": text(response_words),
                          "losing_output": text(response_words), "concept_id": c}
                         for c in range(n_concepts) for _ in range(pairs)])


def run_variant(args: argparse.Namespace) -> dict[str, float]:
    target = load_target_model(args.model_dir, device=args.device, dtype=args.dtype)
    frame = pairs_frame(args.concepts, args.pairs, args.response_words)
    concepts = [Concept(c, f"concept {c}") for c in range(args.concepts)]
    config = RePSConfig(layer=args.layer, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch,
                        disable_tqdm=True, logging_steps=10_000, max_response_length=args.response_words * 4)
    groups = [concepts] if args.variant == "joint" else [[c] for c in concepts]
    if target.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    started = time.perf_counter()
    steps = concept_steps = 0
    for group in groups:
        trainer = RePSTrainer(model=target, args=config, train_dataset=frame, concepts=group)
        trainer.train()
        steps += trainer.state.global_step
        concept_steps += trainer.state.global_step * len(group)
    if target.device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps_per_s": steps / seconds, "concept_steps_per_s": concept_steps / seconds,
            "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=12, help="Preference pairs per concept.")
    parser.add_argument("--batch", type=int, default=3, help="Pairs per concept per micro-batch.")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--response-words", type=int, default=24)
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--gemma2-2b", action="store_true", help="Gemma-2-2B's shape (26 layers, d=2304).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--variant", choices=["joint", "loop"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    record_option(parser, "bench_trainers")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    load = Load.now()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model", args)
        results = {}
        for variant in ("joint", "loop"):
            command = [sys.executable, __file__, *sys.argv[1:], "--variant", variant, "--model-dir", str(model_dir)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[variant] = json.loads(output.strip().splitlines()[-1])
    shape = "gemma-2-2b" if args.gemma2_2b else f"{args.layers} layers, d={args.hidden}"
    print(f"# RePS training, {args.concepts} concepts × {args.pairs} pairs, batch {args.batch}/concept, "
          f"{args.epochs:g} epochs, {args.response_words}-word responses; {shape}, {args.device} {args.dtype}; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| run | time | optimiser steps/s | concept-updates/s | peak memory |")
    print("| --- | --- | --- | --- | --- |")
    for variant, label in (("joint", "one run, all concepts (RePSTrainer over k concepts)"),
                           ("loop", "one run per concept")):
        r = results[variant]
        print(f"| {label} | {r['seconds']:.1f} s | {r['steps_per_s']:.2f} | {r['concept_steps_per_s']:.2f} | "
              f"{r['peak_mib']:.0f} MiB |")
    joint, loop = results["joint"], results["loop"]
    print(f"\njoint / loop: {loop['seconds'] / joint['seconds']:.2f}× faster, "
          f"{joint['peak_mib'] / loop['peak_mib']:.2f}× the peak memory")
    write_record(args.record, "RePS training: one run over all concepts vs one run per concept (time, "
                 "steps/s, concept-updates/s, peak memory)",
                 {"shape": shape, "device": args.device, "dtype": args.dtype, "concepts": args.concepts,
                  "pairs": args.pairs, "batch": args.batch, "epochs": args.epochs,
                  "runs": [{"run": variant, "seconds": round(r["seconds"], 1),
                            "steps/s": round(r["steps_per_s"], 2),
                            "concept-updates/s": round(r["concept_steps_per_s"], 2),
                            "peak (MiB)": round(r["peak_mib"])} for variant, r in results.items()],
                  "joint / loop (speed)": round(loop["seconds"] / joint["seconds"], 2)},
                 how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
