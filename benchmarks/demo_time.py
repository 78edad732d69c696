"""How long `axbench demo` takes on this machine: the whole command and each stage (the README's quick-start figure).

Runs the demo as a user would (`axbench demo`, a fresh output folder, the embedded model already converted) and
reads each stage's time from the run's own `stages/<stage>.json`; writes benchmarks/results/demo_time.json.

    python benchmarks/demo_time.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from records import Load, record_option, write_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    record_option(parser, "demo_time")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="axbench-demo-time-"))
    load = Load.now()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "from axeval.cli import main; main()", "demo", "--output-dir",
                           str(out)], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"axbench demo failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    stages = [{"stage": path.stem, "seconds": round(json.loads(path.read_text())["seconds"], 1)}
              for path in sorted((out / "demo" / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime)]
    ledger = (out / "demo" / "llm-ledger.jsonl").read_text().splitlines()
    shutil.rmtree(out, ignore_errors=True)
    print(f"axbench demo: {seconds:.0f} s wall; " + ", ".join(f"{s['stage']} {s['seconds']:.0f} s" for s in stages))
    write_record(args.record, "wall time of `axbench demo` (fresh output folder, embedded model already converted) "
                 "and of each of its stages", {"wall_s": round(seconds, 1), "llm_calls": len(ledger), "rows": stages},
                 how="python benchmarks/demo_time.py", load=load)


if __name__ == "__main__":
    main()
