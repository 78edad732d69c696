"""Benchmarks of DiffMean training: shared negatives once vs per concept, joint math vs a per-concept loop.

1. Activation passes: `DiffMean.fit` (each text once; the shared negatives cached across concept chunks)
   vs AxBench's way (every concept runs its own 144 = positives + same-genre shared negatives through
   the model). Synthetic texts with AxBench's proportions scaled down; a real model forward.
2. DiffMean math over precomputed activations of Concept500 shape (500 concepts × 72 positives + 216
   shared negatives): one pair of sparse [concepts, texts] × [texts, d] products vs a Python loop over concepts.
3. Probe training on the same cached activations: all concepts as one [k, d] parameter vs one at a time.

    .venv/bin/python benchmarks/bench_activations.py [--model smollm2-135m-instruct] [--concepts 10] ...
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pandas as pd
import torch

from axdata.concepts import Concept
from axmethods.activations import ActivationCollector, TokenActivations, resolve_dtype
from axmethods.methods.base import TrainingSet
from axmethods.methods.diffmean import DiffMean, diffmean_directions
from axmethods.methods.probe import Probe, ProbeConfig
from axmethods.models import load_target_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import Load, record_option, write_record

GENRES = ("text", "code", "math")
WORDS = ["river", "light", "stone", "market", "music", "garden", "number", "code", "function", "value", "ocean", "window", "paper", "story", "city", "engine", "signal", "matrix", "column", "theory", "forest", "cloud", "bridge", "letter", "summer", "winter", "planet"]


def synthetic_train(concepts: int, positives: int, negatives_per_genre: int, words: int, seed: int = 0
                    ) -> tuple[pd.DataFrame, list[Concept]]:
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    rows = [("Write something.", text(), "EEEEE", genre, "negative", -1)
            for genre in GENRES for _ in range(negatives_per_genre)]
    listed = []
    for c in range(concepts):
        genre = GENRES[c % 3]
        listed.append(Concept(c, f"concept {c}", genres=(genre,)))
        rows += [("Write something.", text(), f"concept {c}", genre, "positive", c) for _ in range(positives)]
    frame = pd.DataFrame(rows, columns=["input", "output", "output_concept", "concept_genre", "category", "concept_id"])
    return frame, listed


def bench_shared_negatives(args: argparse.Namespace) -> dict[str, Any]:
    target = load_target_model(args.model, device=args.device, dtype=args.dtype)
    frame, concepts = synthetic_train(args.concepts, args.positives, args.negatives_per_genre, args.words)
    config = {"max_length": args.max_length, "concepts_per_chunk": args.chunk, "activation_dtype": "model"}
    dtype = resolve_dtype("model", target)
    # Warm-up: the first forwards pay one-off allocation and kernel selection costs.
    warm = ActivationCollector(target, args.layer, dtype=dtype, max_length=args.max_length, progress=False)
    warm.collect([target.format_transcript(i, o) for i, o in zip(frame["input"][:32], frame["output"][:32])])

    # CPU time as well as wall time: on a shared machine other jobs' load distorts wall-clock ratios.
    started, cpu_started = time.perf_counter(), time.process_time()
    joint = DiffMean(config)
    collector = joint.collector(target, args.layer)
    dictionary = joint.fit(target, frame, concepts, args.layer, collector=collector)
    shared_s, shared_cpu, shared_texts = (time.perf_counter() - started, time.process_time() - cpu_started,
                                          collector.forward_texts)

    started, cpu_started = time.perf_counter(), time.process_time()
    per_concept_texts = 0
    rows = []
    for concept in concepts:  # AxBench: each concept's 144 examples through the model, nothing kept
        single = ActivationCollector(target, args.layer, batch_size=16, dtype=dtype, max_length=args.max_length,
                                     progress=False)
        data = TrainingSet.from_frame(frame, [concept])
        acts = single.collect(data.transcripts(target))
        rows.append(diffmean_directions(acts, data.membership(1.0), data.membership(0.0)))
        per_concept_texts += single.forward_texts
    per_concept_s, per_concept_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    agreement = torch.nn.functional.cosine_similarity(torch.cat(rows), dictionary.weight, dim=1).min()

    print(f"[1] DiffMean fit, {args.model} layer {args.layer} ({target.dtype}, {target.device}), {len(concepts)} concepts"
          f" × ({args.positives} positives + {args.negatives_per_genre} same-genre shared negatives), "
          f"≤{args.max_length} tokens")
    print(f"    shared negatives once: {shared_s:7.1f} s wall, {shared_cpu:7.1f} s CPU, {shared_texts} texts through "
          "the model")
    print(f"    per concept (AxBench): {per_concept_s:7.1f} s wall, {per_concept_cpu:7.1f} s CPU, {per_concept_texts} "
          "texts through the model")
    print(f"    speed-up {per_concept_s / shared_s:.2f}x wall, {per_concept_cpu / shared_cpu:.2f}x CPU (texts ratio "
          f"{per_concept_texts / shared_texts:.2f}x); "
          f"min cosine between the two results {float(agreement):.6f}")
    return {"benchmark": f"DiffMean fit, {len(concepts)} concepts, {args.model} layer {args.layer}",
            "ours (s)": round(shared_s, 1), "baseline (s)": round(per_concept_s, 1),
            "speed-up": round(per_concept_s / shared_s, 2), "ours CPU (s)": round(shared_cpu, 1),
            "baseline CPU (s)": round(per_concept_cpu, 1), "min cosine": round(float(agreement), 6)}


def bench_joint_math(args: argparse.Namespace) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    n_concepts, positives, shared_per_genre = args.math_concepts, 72, 72
    n_texts = n_concepts * positives + 3 * shared_per_genre
    lengths = torch.randint(args.math_tokens // 2, args.math_tokens * 3 // 2, (n_texts,), generator=generator)
    offsets = torch.zeros(n_texts + 1, dtype=torch.long)
    offsets[1:] = lengths.cumsum(0)
    values = torch.randn(int(offsets[-1]), args.hidden, generator=generator).to(torch.bfloat16)
    acts = TokenActivations(values, offsets)
    shared = torch.arange(n_concepts * positives, n_texts).view(3, shared_per_genre)
    positive = torch.zeros(n_concepts, n_texts)
    negative = torch.zeros(n_concepts, n_texts)
    for c in range(n_concepts):  # setup only: the membership masks
        positive[c, c * positives:(c + 1) * positives] = 1
        negative[c, shared[c % 3]] = 1

    started = time.perf_counter()
    joint = diffmean_directions(acts, positive, negative)
    joint_s = time.perf_counter() - started

    started = time.perf_counter()
    looped = []
    for c in range(n_concepts):  # AxBench-style: one concept's 144 examples at a time
        rows = torch.cat([torch.arange(c * positives, (c + 1) * positives), shared[c % 3]])
        sub = acts.select(rows)
        labels = torch.zeros(1, len(rows))
        labels[0, :positives] = 1
        looped.append(diffmean_directions(sub, labels, 1 - labels))
    loop_s = time.perf_counter() - started
    agreement = torch.nn.functional.cosine_similarity(torch.cat(looped), joint, dim=1).min()
    print(f"[2] DiffMean math, {n_concepts} concepts × 144 texts ({n_texts} texts, {int(offsets[-1])} tokens, "
          f"d={args.hidden}, bf16 activations): joint {joint_s:.2f} s vs per-concept loop {loop_s:.2f} s → "
          f"{loop_s / joint_s:.1f}x; min cosine {float(agreement):.6f}")
    return [{"benchmark": f"DiffMean math, {n_concepts} concepts, d={args.hidden}",
             "ours (s)": round(joint_s, 2), "baseline (s)": round(loop_s, 2),
             "speed-up": round(loop_s / joint_s, 2),
             "min cosine": round(float(agreement), 6)},
            bench_joint_probe(acts, positive, negative, args.probe_concepts, args.probe_epochs)]


def bench_joint_probe(acts: TokenActivations, positive: torch.Tensor, negative: torch.Tensor, n_concepts: int,
                      epochs: int) -> dict[str, Any]:
    """Probe training on cached activations: all concepts as one [k, d] parameter vs one concept at a time."""
    members = torch.stack([torch.cat([p.nonzero()[:, 0], n.nonzero()[:, 0]])
                           for p, n in zip(positive[:n_concepts], negative[:n_concepts])])
    labels = torch.cat([torch.ones(n_concepts, int(positive[0].sum())),
                        torch.zeros(n_concepts, int(negative[0].sum()))], dim=1)
    concepts = [Concept(c, f"concept {c}") for c in range(n_concepts)]
    data = TrainingSet(concepts, [""] * acts.n_texts, [""] * acts.n_texts, torch.zeros(acts.n_texts, dtype=torch.bool),
                       members, labels)
    config = ProbeConfig(num_train_epochs=epochs)

    started = time.perf_counter()
    joint = Probe(config).fit_chunk(acts, data, torch.Generator().manual_seed(0))
    joint_s = time.perf_counter() - started
    started = time.perf_counter()
    looped = torch.cat([Probe(config).fit_chunk(acts, data.chunk(c, c + 1), torch.Generator().manual_seed(0))
                        for c in range(n_concepts)])
    loop_s = time.perf_counter() - started
    # Random activations carry no signal, so the two runs' directions are not compared here (the unit
    # tests compare joint and single-concept runs on data with a signal).
    assert joint.shape == looped.shape
    print(f"[3] Probe training ({epochs} epochs, batch 12 × accumulation 4) on cached activations, {n_concepts} "
          f"concepts: joint {joint_s:.2f} s vs per-concept loop {loop_s:.2f} s → {loop_s / joint_s:.1f}x")
    return {"benchmark": f"Probe training, {n_concepts} concepts, {epochs} epochs",
            "ours (s)": round(joint_s, 2), "baseline (s)": round(loop_s, 2),
            "speed-up": round(loop_s / joint_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--dtype", default="auto", help="model dtype: auto | float32 | bfloat16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--concepts", type=int, default=12)
    parser.add_argument("--positives", type=int, default=24)
    parser.add_argument("--negatives-per-genre", type=int, default=24)
    parser.add_argument("--words", type=int, default=40)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=4, help="concepts per chunk in the shared-negatives run")
    parser.add_argument("--math-concepts", type=int, default=500)
    parser.add_argument("--math-tokens", type=int, default=16, help="mean tokens per text in the math benchmark")
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--probe-concepts", type=int, default=100)
    parser.add_argument("--probe-epochs", type=int, default=4)
    parser.add_argument("--skip-model", action="store_true", help="run only the math benchmark")
    record_option(parser, "bench_activations")
    args = parser.parse_args()
    load = Load.now()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}")
    rows = [] if args.skip_model else [bench_shared_negatives(args)]
    rows += bench_joint_math(args)
    write_record(args.record, "DiffMean and Probe fitting: shared negatives once vs per concept, joint maths "
                 "vs a per-concept loop (ours vs the baseline, wall seconds)",
                 {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows},
                 how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
