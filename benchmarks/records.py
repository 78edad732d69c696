"""Benchmark records: every figure the README and docs/benchmarks.md quote is a JSON file under benchmarks/results/.

A record says what was measured (`figure`), how (`how`: the command), on what (`machine`), under which load
(`load`: the 1-minute load average and the CPU count before and after, so a busy machine shows), at which commit
(`commit`, with "+uncommitted" when the tree had changes) and when (`date`), next to the numbers (`results`).

    from records import Load, write_record
    load = Load.now()
    ...  # measure
    write_record("perplexity_cost", "…", results, how="python benchmarks/perplexity_cost.py", load=load.after())
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """The CPU (and GPU, where torch sees one), cores and memory of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")) / 2**20
    except (OSError, StopIteration):
        memory = float("nan")
    text = f"{cpu}, {os.cpu_count()} CPUs, {memory:.0f} GB"
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def commit() -> str:
    """The short commit of the tree, "+uncommitted" when it has changes (the record is of that tree)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+uncommitted" if git("status", "--porcelain", "--untracked-files=no") else "")


@dataclass
class Load:
    """The 1-minute load average before and after a measurement (a shared or busy machine shows here)."""

    before: float
    after: float | None = None
    cpus: int = field(default_factory=lambda: os.cpu_count() or 0)

    @classmethod
    def now(cls) -> Load:
        return cls(os.getloadavg()[0])

    def done(self) -> Load:
        self.after = os.getloadavg()[0]
        return self


def write_record(name: str, figure: str, results: dict[str, Any], *, how: str, load: Load,
                 notes: str | None = None) -> Path:
    """Write benchmarks/results/<name>.json (replacing an older record of the same name) and return its path."""
    record = {"figure": figure, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "load": asdict(load.done() if load.after is None else load), "commit": commit(), "how": how,
              "results": results}
    if notes:
        record["notes"] = notes
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=float) + "\n", encoding="utf-8")
    tmp.replace(path)
    print(f"record: {path.relative_to(ROOT)}", file=sys.stderr)
    return path
