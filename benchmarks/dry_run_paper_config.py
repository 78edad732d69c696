"""Dry run of a paper config on a random-initialised model of the paper's shape: every stage, on CPU, measured.

So the first real GPU run does not discover a shape, dtype or memory bug: the config's own methods, dtypes
and stages, with only sizes overridden (`--set`: concepts, examples, tokens, epochs, factors, resamples) and
the LLM answered by the embedded local server (`llm.endpoint=embedded`, the stand-in `make demo` uses).

The model: a config.json with the real Gemma-2 values (`--shape gemma-2-2b`: vocabulary 256,000, 26 layers,
hidden 2304, ...; `gemma-2-9b`: 42 layers, hidden 3584; `tiny`: the same architecture at hidden 64, 2 layers, for
tests), weights drawn at random and saved once under `--work`. No Gemma tokenizer is available offline, so the
tokenizer is the tests' byte-level BPE with Gemma's chat template and special tokens at Gemma's ids (pad 0,
eos 1, bos 2; `tests/fixtures_models.py`), its vocabulary filled up to the model's with filler words (so what the
random model samples decodes to text): every tensor has the paper shape except that texts cost more tokens per
word.

Each stage runs in a fresh process (`run_pipeline` up to that stage; earlier stages are current and skipped), so
its peak resident set (VmHWM) is that stage's own, model load included; `--in-process` runs them all in one process
(faster, for tests; the peak is then the run's).

    .venv/bin/python benchmarks/dry_run_paper_config.py configs/paper/2b-l20.yaml          # ~10 GB disk, long
    .venv/bin/python benchmarks/dry_run_paper_config.py configs/paper/2b-l20.yaml --shape tiny   # seconds

`--record NAME` writes the figures as benchmarks/results/NAME.json (`records.write_record`: machine, load, commit),
the record docs/benchmarks.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# Gemma-2 config values (transformers' Gemma2Config fields) of google/gemma-2-2b(-it) and -9b(-it).
GEMMA2_COMMON: dict[str, Any] = {
    "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "vocab_size": 256000, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0, "attention_bias": False, "attention_dropout": 0.0, "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 256, "sliding_window": 4096,
    "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "tie_word_embeddings": True,
    "initializer_range": 0.02, "cache_implementation": "hybrid", "torch_dtype": "bfloat16",
}
SHAPES: dict[str, dict[str, Any]] = {
    "gemma-2-2b": {**GEMMA2_COMMON, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                   "num_attention_heads": 8, "num_key_value_heads": 4},
    "gemma-2-9b": {**GEMMA2_COMMON, "hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
                   "num_attention_heads": 16, "num_key_value_heads": 8},
    # Same architecture, test size: the layer is clamped to the last one.
    "tiny": {**GEMMA2_COMMON, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 16,
             "vocab_size": 512, "sliding_window": 64},
}
STAGE_NAMES = ("model", "llm", "data", "train", "latent", "steering", "judge", "report")
FALLBACK_CONCEPTS = Path("/work/shared/data/axbench/concept500/prod_2b_l10_v1/generate/metadata.jsonl")
# Sizes only: 2 concepts, a few examples and tokens, one epoch, two factors, few resamples.
SIZE_OVERRIDES = [
    "data.max_concepts=2", "data.num_of_examples=4", "data.output_length=12", "data.latent_num_of_examples=2",
    "data.imbalance_factor=2", "data.max_related_words=2", "data.steering_num_of_examples=2",
    "data.pool_size=20", "data.target_batch_size=4",
    "inference.max_new_tokens=4", "inference.factors=[1.0,2.0]", "inference.steering_batch_size=8",
    "inference.latent_batch_size=4", "judge.max_tokens=64", "judge.max_seconds_per_rating=60",
    "report.n_resamples=50",
]
EPOCH_METHODS = ("probe", "reft-r1", "ssv", "reps", "bipo", "lora", "loreft", "sft", "hypersteer")
# Offline stand-ins: the embedded LLM server for gpt-4o-mini, the shipped instruction pools for the Hub datasets.
OFFLINE_OVERRIDES = [
    "llm.endpoint=embedded", "llm.model=smollm2-135m-instruct", "llm.max_concurrency=4", "llm.timeout_s=300",
    "data.text_instructions=shipped", "data.code_instructions=shipped", "data.math_instructions=shipped",
    "data.steering_instructions=shipped",
]


def peak_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed_build(directory: Path, shape: str) -> dict[str, Any]:
    """`build_model`, as a figures record."""
    t0 = time.perf_counter()
    build_model(directory, shape)
    return {"stage": "build", "seconds": round(time.perf_counter() - t0, 1), "peak_mib": round(peak_mib())}


def build_model(directory: Path, shape: str) -> Path:
    """config.json of `shape`, random bf16 weights, the Gemma-format test tokenizer; reused when present."""
    if (directory / "config.json").exists() and any(directory.glob("*.safetensors")):
        cover_vocabulary(directory, SHAPES[shape]["vocab_size"])
        return directory
    import torch
    from fixtures_models import build_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma2Config

    build_tiny_model(directory, "gemma2")  # the tokenizer (and a tiny model, replaced below)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    for stale in directory.glob("*.safetensors"):
        stale.unlink()
    config = Gemma2Config(**{k: v for k, v in SHAPES[shape].items() if k not in ("architectures", "model_type",
                                                                                    "torch_dtype")})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    # A random model with tied embeddings echoes its last input token under greedy decoding, and every chat prompt
    # ends in "\n": its greedy answers (AxBench's shared negatives) would be blank and the data stage would have
    # no negatives, unlike a real model's. A zero "\n" row removes the echo; every other weight stays random.
    with torch.no_grad():
        model.get_input_embeddings().weight[newline] = 0
    model.generation_config.pad_token_id = 0
    model.save_pretrained(directory)
    cover_vocabulary(directory, config.vocab_size, tokenizer)
    return directory


def cover_vocabulary(directory: Path, vocab_size: int, tokenizer: Any = None) -> None:
    """Give every model id a token: the test tokenizer has ~500, and a random model samples any of the 256,000 ids,
    which would decode to empty texts (no negatives, no preference pairs: a data stage unlike a real model's).
    Filler words " w<i>" (plain added tokens, as Gemma's <unused…> fill its vocabulary) make every sample a word."""
    from transformers import AutoTokenizer

    tokenizer = tokenizer or AutoTokenizer.from_pretrained(directory)
    if len(tokenizer) >= vocab_size:
        return
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(f" w{i}", normalized=False, special=False)
                          for i in range(len(tokenizer), vocab_size)])
    tokenizer.save_pretrained(directory)


def overrides(config_path: Path, model_dir: Path, work: Path, shape: str) -> list[str]:
    from axeval.config import AxbenchConfig

    config = AxbenchConfig.load(config_path)
    layer = config.run.layer if shape != "tiny" else min(config.run.layer, SHAPES["tiny"]["num_hidden_layers"] - 1)
    sets = [f"model.model={model_dir}", f"run.output_dir={work}", f"run.name=dry-run-{config.run.name}",
            f"run.layer={layer}", *OFFLINE_OVERRIDES, *SIZE_OVERRIDES]
    concepts = config.data.concept_path
    if not concepts or not Path(concepts).exists():
        sets.append(f"data.concept_path={FALLBACK_CONCEPTS}")
    settings = {name: dict(value or {}) for name, value in config.methods.settings.items()}
    for method in config.methods.train:
        if method in EPOCH_METHODS:
            settings.setdefault(method, {})["num_train_epochs"] = 1
    if settings:
        sets.append(f"methods.settings={json.dumps(settings)}")  # JSON is YAML: a flow mapping
    if config.evaluation.suppresses:  # a two-pair many-shot grid: the shots are written by the stand-in LLM
        sets += ["data.attack_shots=2", "evaluation.many_shot=[1,2]"]
    return sets


def stage_names(config_path: Path, sets: list[str]) -> list[str]:
    """The config's own stages, in order (suppression modes add `suppression` and `suppression-judge`)."""
    from axeval.config import AxbenchConfig
    from axeval.stages import default_stages

    return [stage.name for stage in default_stages(AxbenchConfig.load(config_path, sets))]


def run_stage(config_path: Path, sets: list[str], upto: str) -> dict[str, Any]:
    """`run_pipeline` up to stage `upto` in this (fresh) process; earlier stages are current and skipped."""
    from axeval.config import AxbenchConfig
    from axeval.pipeline import run_pipeline
    from axeval.stages import default_stages

    config = AxbenchConfig.load(config_path, sets)
    stages = default_stages(config)
    names = [stage.name for stage in stages]
    t0 = time.perf_counter()
    result = run_pipeline(config, stages[:names.index(upto) + 1])
    last = result.stages[-1]
    return {"stage": upto, "status": last.status, "seconds": round(time.perf_counter() - t0, 1),
            "stage_seconds": round(last.seconds, 1), "peak_mib": round(peak_mib()), "line": last.line}


def dry_run(config_path: Path, shape: str, work: Path, *, stages: list[str] | tuple[str, ...] | None = None,
            extra: list[str] | tuple[str, ...] = (), in_process: bool = False) -> dict[str, Any]:
    """Build (or reuse) the model, then run `stages` in order: the overrides used and one figures record per step
    (`results`).

    Each stage runs in a fresh process (its own peak RSS) unless `in_process`: then every stage runs here, which
    saves a process start and model load per stage, and `peak_mib` is the peak so far (tests use it).
    """
    model_dir = work / f"model-{shape}"
    me = [sys.executable, __file__, str(config_path), "--shape", shape]
    results = []
    if in_process:
        results.append(timed_build(model_dir, shape))
    else:
        build = subprocess.run([*me, "--build", str(model_dir)], check=True, capture_output=True, text=True)
        results.append(json.loads(build.stdout.strip().splitlines()[-1]))
    print(f"model {model_dir}: {results[-1]}", flush=True)
    sets = overrides(config_path, model_dir, work, shape) + list(extra)
    print("overrides:", " ".join(f"--set {s}" for s in sets), flush=True)
    names = stage_names(config_path, sets)  # the config's own stages, in order
    for name in [name for name in names if stages is None or name in set(stages)]:
        if in_process:
            results.append(run_stage(config_path, sets, name))
        else:
            done = subprocess.run([*me, "--stage", name, "--sets-json", json.dumps(sets)], capture_output=True,
                                  text=True)
            if done.returncode != 0:
                print(done.stdout[-3000:], done.stderr[-6000:], sep="\n")
                raise SystemExit(f"stage {name} failed (exit {done.returncode})")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = results[-1]
        r["load_after"] = round(os.getloadavg()[0], 2)  # a long run on a shared machine: the load at each stage
        print(f"  {name:17s} {r['status']:7s} {r['stage_seconds']:7.1f} s  peak {r['peak_mib']:6d} MiB  {r['line']}",
              flush=True)
    return {"config": str(config_path), "shape": shape, "overrides": sets, "in_process": in_process,
            "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gemma-2-2b")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "dry-run")
    parser.add_argument("--stages", nargs="+", default=None, help="only these stages (default: every stage of the "
                        "config, e.g. " + ", ".join(STAGE_NAMES) + ")")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="one more override")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--record", metavar="NAME", help="also write the figures as the benchmark record "
                        "benchmarks/results/NAME.json (machine, load, commit)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every stage in this process (faster; the peak RSS is then the run's, not a stage's)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: one stage in this process
    parser.add_argument("--sets-json", help=argparse.SUPPRESS)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Set here, not in dry_run(): a test that calls dry_run() keeps its own environment (its Hub stand-in), and
    # what a library call sets in os.environ would reach every later subprocess of that test process.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.build:
        print(json.dumps(timed_build(args.build, args.shape)))
        return
    if args.stage:
        print(json.dumps(run_stage(args.config, json.loads(args.sets_json), args.stage)))
        return
    from records import Load, write_record

    load = Load.now()
    report = dry_run(args.config, args.shape, args.work, stages=args.stages, extra=args.extra,
                     in_process=args.in_process)
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    print("| stage | time (s) | process peak RSS (MiB) | made |")
    print("|---|---:|---:|---|")
    for r in report["results"]:
        print(f"| {r['stage']} | {r.get('stage_seconds', r['seconds'])} | {r['peak_mib']} | {r.get('line', '')} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.record:
        write_record(args.record, f"dry run of {args.config.name} at the {args.shape} shape: time and peak RSS per "
                     "stage", report, how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
