"""Benchmark of CLI start-up: `axbench --help` against a bare Python and against importing torch.

Every `axbench` command pays the CLI's start-up before it does anything, so commands that need no model
(`data import|info|push|pull`, `eval detect|report`, `config show`, `llm ledger`, `--help`) should not load
torch. Each command is run `--repeats` times in a fresh process; the median wall time is reported, with the
ratio to a bare interpreter start, to `import torch, transformers`, and to `import axeval.config` — what
`axbench --help` imported before torch was deferred to the commands that need it.

    .venv/bin/python benchmarks/bench_cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import Load, record_option, write_record

COMMANDS = {
    "bare python": [sys.executable, "-c", "pass"],
    "import torch, transformers models": [sys.executable, "-c", "import torch, transformers; "
                                          "from transformers import AutoModelForCausalLM"],
    # What `axbench --help` imported before torch was deferred: the run config (and through it the trainers).
    "before: import axeval.config": [sys.executable, "-c", "import axeval.config"],
    "axbench --help": [sys.executable, "-c", "from axeval.cli import main; main()", "--help"],
    "axbench eval --help": [sys.executable, "-c", "from axeval.cli import main; main()", "eval", "--help"],
}


def median_seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    record_option(parser, "bench_cli_startup")
    args = parser.parse_args()
    load = Load.now()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    results = {name: median_seconds(command, args.repeats) for name, command in COMMANDS.items()}
    for name, seconds in results.items():
        print(f"{name:36s} {seconds:6.2f} s   ×{seconds / results['import torch, transformers models']:4.2f} torch "
              f"import   ×{seconds / results['before: import axeval.config']:4.2f} before")
    write_record(args.record, f"CLI start-up: median wall time of {args.repeats} fresh processes per command",
                 {"repeats": args.repeats, "rows": [
                     {"command": name, "median (s)": round(seconds, 2),
                      "× torch import": round(seconds / results["import torch, transformers models"], 2),
                      "× import axeval.config": round(seconds / results["before: import axeval.config"], 2)}
                     for name, seconds in results.items()]},
                 how="python " + " ".join(sys.argv), load=load)


if __name__ == "__main__":
    main()
