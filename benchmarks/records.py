"""Benchmark records: each figure the README and docs quote is a JSON file in results/.

A record says what was measured (`figure`), how (`how`: the command), on what (`machine`), under which load
(`load`: the 1-minute load average and the CPU count before and after, so a busy machine shows), at which
commit (`commit`, with "+uncommitted" when the tree had changes) and when (`date`), next to the numbers
(`results`). Put the rows a script prints into `results` as a list of dicts (one dict a row, keys the printed
column names): `render` turns every such list into a table, so a new record needs no rendering code.

    from records import Load, write_record
    load = Load.now()
    ...  # measure
    write_record("perplexity_cost", "…", results, how="python benchmarks/perplexity_cost.py", load=load)

The tables in the docs that hold record blocks (DOCS: docs/benchmarks.md, docs/protocol.md) are regenerated
from the records, so they cannot go stale:

    python benchmarks/records.py render          # rewrite each <!-- record: NAME --> … <!-- /record --> block
    python benchmarks/records.py render --check  # exit 1 when a block differs from its record (stale numbers)
    python benchmarks/records.py render --doc docs/protocol.md  # one doc only

`AXBENCH_RECORDS_DIR` points writing and rendering at another folder (a smoke run must not replace a record).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from axdata.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("AXBENCH_RECORDS_DIR") or Path(__file__).resolve().parent / "results")
# The docs that show records; a new one joins this list so `render --check` (and its test) covers it.
DOCS = (ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "protocol.md")
OPEN = re.compile(r"<!-- record: ([\w.-]+) -->")
CLOSE = "<!-- /record -->"
# What a record says about the measurement; everything else is its numbers. Records written by hand before
# write_record existed keep their numbers at the top level (and say `command` for `how`).
PROVENANCE = ("figure", "date", "machine", "load", "commit", "how", "command", "notes", "results")


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
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

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


def record_option(parser: argparse.ArgumentParser, default: str) -> None:
    """`--record NAME`: the record a script writes (another name keeps a GPU run beside the CPU one, say)."""
    parser.add_argument("--record", default=default, metavar="NAME",
                        help=f"write the figures to benchmarks/results/NAME.json (default: {default})")


def write_record(name: str, figure: str, results: dict[str, Any], *, how: str, load: Load,
                 notes: str | None = None) -> Path:
    """Write benchmarks/results/<name>.json (replacing an older record of that name) and return its path."""
    record = {"figure": figure, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "load": asdict(load.done() if load.after is None else load), "commit": commit(), "how": how,
              "results": results}
    if notes:
        record["notes"] = notes
    path = RESULTS / f"{name}.json"
    atomic_write_text(path, json.dumps(record, indent=1, default=float) + "\n")
    print(f"record: {path}", file=sys.stderr)
    return path


# -- rendering --------------------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    """One value as a table cell: floats to 4 significant digits (whole ones without a point), lists joined"""
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} {_cell(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows)]


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(row, dict) for row in value)


def _nested(value: Any) -> bool:
    return isinstance(value, dict) or _is_rows(value)


def _flat(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and not any(_nested(v) for v in value.values())


def _split(data: dict[str, Any], prefix: str = "") -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """The record's single values (dotted keys) and its tables: lists of rows, and dicts nested in a row."""
    values, tables = [], []
    # Sibling dicts with the same keys (per method: {"diffmean": {...}, "probe": {...}}) are one table's rows.
    alike = [k for k, v in data.items() if _flat(v) and sum(_flat(w) and w.keys() == v.keys()
                                                             for w in data.values()) > 1]
    if alike:
        caption = prefix.rstrip(".") or ", ".join(alike)
        tables.append((caption, [{"": k, **data[k]} for k in alike]))
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key in alike:
            continue
        if isinstance(value, dict):
            more, nested = _split(value, f"{path}.")
            values += more
            tables += nested
        elif _is_rows(value):
            tables.append((path, value))
        else:
            values.append((path, value))
    return values, tables


def _rows_table(caption: str, rows: list[dict[str, Any]]) -> list[str]:
    """A list of rows as a table; a dict or list of rows inside a row becomes a table of its own below it."""
    columns = list(dict.fromkeys(k for row in rows for k, v in row.items() if not _nested(v)))
    lines = [f"`{caption}`:", "", *_table(columns, [[row.get(c) for c in columns] for row in rows])]
    for i, row in enumerate(rows, 1):
        label = f"{caption}, row {i} ({_cell(row[columns[0]])})" if columns and columns[0] in row else \
            f"{caption}, row {i}"
        for key, value in row.items():
            if _nested(value):
                inner = value if isinstance(value, dict) else {"": value}
                lines += ["", *_data_tables(inner, f"{label}: {key}")]
    return lines


def _data_tables(data: dict[str, Any], caption: str | None = None) -> list[str]:
    values, tables = _split(data)
    lines: list[str] = []
    if values:
        if caption:
            lines += [f"`{caption}`:", ""]
        lines += _table(["result", "value"], [[k, v] for k, v in values])
    for key, rows in tables:
        name = " ".join(part for part in (caption, key) if part)
        lines += ["", *_rows_table(name, rows)] if lines else _rows_table(name, rows)
    return lines


def _load_text(load: Any) -> str:
    """write_record's load as "1-min load 0.22 → 1.01 on 2 CPUs"; a hand-written record's as it is."""
    if isinstance(load, dict) and isinstance(load.get("before"), int | float) and \
            isinstance(load.get("after"), int | float):
        return f"1-min load {load['before']:.2f} → {load['after']:.2f} on {load.get('cpus', '?')} CPUs"
    return f"load: {_cell(load)}"


def render_record(name: str, record: dict[str, Any]) -> str:
    """A record as markdown: where it is, what it measured and how, then its numbers as tables."""
    load = _load_text(record["load"]) if "load" in record else None
    facts = [record.get("date"), record.get("machine"), load]
    if "commit" in record:
        facts.append(f"commit {record['commit']}")
    lines = [f"Record [`benchmarks/results/{name}.json`](../benchmarks/results/{name}.json): "
             f"{record.get('figure', '(no figure named)')}.", "; ".join(_cell(f) for f in facts if f) + "."]
    how = record.get("how") or record.get("command")
    if how:
        lines += ["", f"    {how}"]
    notes = record.get("notes")
    if notes:
        lines += ["", *(f"- {_cell(note)}" for note in (notes if isinstance(notes, list) else [notes]))]
    data = record.get("results", {k: v for k, v in record.items() if k not in PROVENANCE})
    return "\n".join([*lines, "", *_data_tables(data)])


class DocError(ValueError):
    """A marker without its end, or a block whose record is missing or unreadable: one line for the user."""


def read_record(name: str, results: Path) -> dict[str, Any]:
    path = results / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DocError(f"no record {path}") from None
    except json.JSONDecodeError as error:
        raise DocError(f"{path} is not JSON: {error}") from None


def render_doc(text: str, results: Path, where: str = "doc") -> tuple[str, list[str], list[str]]:
    """`text` with every record block regenerated; the names of the blocks and of those that changed."""
    lines, out, names, changed, i = text.splitlines(keepends=True), [], [], [], 0
    while i < len(lines):
        line, i = lines[i], i + 1
        if line.strip() == CLOSE:
            raise DocError(f"{where}:{i}: {CLOSE} without its <!-- record: NAME -->")
        found = OPEN.fullmatch(line.strip())
        if not found:
            out.append(line)
            continue
        start, name = i, found.group(1)
        while i < len(lines) and lines[i].strip() != CLOSE:
            if OPEN.fullmatch(lines[i].strip()):
                break
            i += 1
        if i == len(lines) or lines[i].strip() != CLOSE:
            raise DocError(f"{where}:{start}: <!-- record: {name} --> has no {CLOSE} before the next block "
                           "or the end")
        old, new = "".join(lines[start:i]), "\n" + render_record(name, read_record(name, results)) + "\n\n"
        out += [line, new, lines[i]]
        names.append(name)
        if old != new:
            changed.append(name)
        i += 1
    return "".join(out), names, changed


def _shown(doc: Path) -> set[str]:
    """The records `doc` has blocks for (an unreadable doc shows none; rendering it is what reports the error)."""
    try:
        return set(OPEN.findall(doc.read_text(encoding="utf-8")))
    except OSError:
        return set()


def render(docs: list[Path], results: Path, check: bool) -> int:
    """Regenerate the docs' record blocks (atomically), or with `check` say which are stale: exit status.

    Every doc is rendered before any is written, so a broken block in one leaves all of them as they were.
    """
    rendered = []
    try:
        for doc in docs:
            rendered.append((doc, *render_doc(doc.read_text(encoding="utf-8"), results, str(doc))))
    except (DocError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # A record is shown when any doc of DOCS shows it, even when `--doc` renders just one of them.
    shown = set().union(*(names for _, _, names, _ in rendered), *(_shown(doc) for doc in DOCS))
    unshown = sorted({p.stem for p in results.glob("*.json")} - shown)
    if unshown:
        where = ", ".join(dict.fromkeys(doc.name for doc in [*DOCS, *docs]))
        print(f"records no block of {where} shows: {', '.join(unshown)}", file=sys.stderr)
    status = 0
    for doc, text, names, changed in rendered:
        if check and changed:
            print(f"{doc}: stale: the block(s) {', '.join(changed)} differ from their records; "
                  "run `python benchmarks/records.py render`", file=sys.stderr)
            status = 1
        elif check:
            print(f"{doc}: {len(names)} record blocks match their records", file=sys.stderr)
        else:
            if changed:
                atomic_write_text(doc, text)
            print(f"{doc}: {len(names)} record blocks, {len(changed)} rewritten ({', '.join(changed) or 'none'})",
                  file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("render", help="regenerate the record blocks of " +
                                  ", ".join(os.path.relpath(doc, ROOT) for doc in DOCS))
    command.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is stale")
    command.add_argument("--doc", type=Path, help="this doc only (default: every doc of DOCS)")
    command.add_argument("--results", type=Path, default=RESULTS, help="the records' folder")
    args = parser.parse_args(argv)
    return render([args.doc] if args.doc else list(DOCS), args.results, args.check)


if __name__ == "__main__":
    sys.exit(main())
