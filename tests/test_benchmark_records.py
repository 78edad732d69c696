"""Figures trace to benchmark records (issue 28, "numbers that cannot go stale").

The record blocks of docs/benchmarks.md and docs/protocol.md are exactly what `benchmarks/records.py render`
makes of the records in benchmarks/results/, an edited record makes `render --check` fail (and `render` brings
the doc back in line),
every section of the doc is record-backed or says it is not, and every README passage that quotes a
measurement names the record it comes from (or says it has none yet). Offline, no model: a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
PROTOCOL = ROOT / "docs" / "protocol.md"
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
RECORD_PATH = re.compile(r"benchmarks/results/([a-z0-9_][a-z0-9_.-]*)\.json")  # NAME: a placeholder
NO_RECORD = "not yet from a record"
# A measured figure: a number with a unit of time, speed, ratio or share.
FIGURE = re.compile(r"(?<![\w.-])\d+(?:[.,]\d+)?½?\s?(?:×|%|min\b|minutes?\b|s\b|seconds?\b|tok/s|hours?\b)")
# README numbers with such a unit that are settings or definitions, not measurements (why, beside each).
NOT_MEASURED = (
    re.compile(r"95 ?%"),  # the confidence level of the intervals
    re.compile(r"10 × (the SAE's|its calibration)"),  # the output score's amplification (a setting)
    re.compile(r"at least 15%"),  # the signature words' threshold (a definition)
    re.compile(r"3×3 confusion"),  # a matrix's shape
    re.compile(r"~1 minute\)"),  # the one-off .argilla-venv set-up, a rough duration stated for planning
)


def _records_module():
    spec = importlib.util.spec_from_file_location("records", ROOT / "benchmarks" / "records.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["records"] = module
    spec.loader.exec_module(module)
    return module


records = _records_module()


def test_the_docs_match_their_records():
    """The command the docs name, as a user runs it: exit 0 when every block of every doc matches its record."""
    assert tuple(records.DOCS) == (DOC, PROTOCOL)
    done = subprocess.run([sys.executable, "benchmarks/records.py", "render", "--check"], cwd=ROOT,
                          capture_output=True, text=True, check=False,
                          env={k: v for k, v in os.environ.items() if k != "AXBENCH_RECORDS_DIR"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # results only on stdout, and a check has none
    for doc in (DOC, PROTOCOL):  # each doc checked, and each shows at least one record
        assert re.search(rf"{re.escape(str(doc))}: [1-9]\d* record blocks match their records", done.stderr), \
            done.stderr


def test_a_stale_protocol_block_fails_the_default_check_and_render_rewrites_only_that_doc(tmp_path, monkeypatch,
                                                                                          capsys):
    """The default covers docs/protocol.md too; a record either doc shows is not reported as shown by none."""
    results, docs = tmp_path / "results", [tmp_path / "benchmarks.md", tmp_path / "protocol.md"]
    shutil.copytree(RESULTS, results)
    for source, copy in zip((DOC, PROTOCOL), docs, strict=True):
        shutil.copy(source, copy)
    monkeypatch.setattr(records, "DOCS", tuple(docs))
    assert records.main(["render", "--check", "--results", str(results)]) == 0
    err = capsys.readouterr().err
    assert "protocol_effects_concept10" not in err and "perplexity_cost" not in err

    record = json.loads((results / "protocol_effects_concept10.json").read_text())
    record["results"]["latent_rows"] = 123456
    (results / "protocol_effects_concept10.json").write_text(json.dumps(record))
    (results / "unshown_smoke.json").write_text(json.dumps({"figure": "x", "results": {"n": 1}}))
    before = [doc.read_text() for doc in docs]
    assert records.main(["render", "--check", "--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert f"{docs[1]}: stale: the block(s) protocol_effects_concept10" in err
    assert f"{docs[0]}: stale" not in err and f"{docs[0]}: " in err
    unshown = next(line for line in err.splitlines() if line.startswith("records no block of"))
    assert "unshown_smoke" in unshown and "protocol_effects_concept10" not in unshown
    assert [doc.read_text() for doc in docs] == before  # --check changes nothing

    assert records.main(["render", "--results", str(results)]) == 0
    assert docs[0].read_text() == before[0]  # benchmarks.md was not stale: untouched
    assert "| latent_rows | 123456 |" in docs[1].read_text() and docs[1].read_text() != before[1]
    assert records.main(["render", "--check", "--results", str(results)]) == 0


def test_an_edited_record_makes_the_check_fail_and_render_brings_the_doc_back(tmp_path, capsys):
    results, doc = tmp_path / "results", tmp_path / "benchmarks.md"
    shutil.copytree(RESULTS, results)
    shutil.copy(DOC, doc)
    record = json.loads((results / "perplexity_cost.json").read_text())
    assert "| ratio | 1.559 |" in doc.read_text()
    record["results"]["ratio"] = 9.876
    (results / "perplexity_cost.json").write_text(json.dumps(record))

    before = doc.read_text()
    assert records.main(["render", "--check", "--doc", str(doc), "--results", str(results)]) == 1
    assert "perplexity_cost" in capsys.readouterr().err
    assert doc.read_text() == before  # --check changes nothing

    assert records.main(["render", "--doc", str(doc), "--results", str(results)]) == 0
    after = doc.read_text()
    assert "| ratio | 9.876 |" in after and "| ratio | 1.559 |" not in after
    assert after.replace("9.876", "1.559") == before  # only the block changed
    assert records.main(["render", "--check", "--doc", str(doc), "--results", str(results)]) == 0


@pytest.mark.parametrize(("text", "message"), [
    ("a\n<!-- record: no_such_record -->\n<!-- /record -->\n", "no record"),
    ("a\n<!-- record: perplexity_cost -->\nb\n",
     "doc.md:2: <!-- record: perplexity_cost --> has no <!-- /record -->"),
    ("a\n<!-- /record -->\n", "doc.md:2: <!-- /record --> without"),
])
def test_a_broken_block_is_one_line_naming_it(tmp_path, capsys, text, message):
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    assert records.main(["render", "--doc", str(doc), "--results", str(RESULTS)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert doc.read_text() == text


def test_a_written_record_renders_its_rows_as_a_table(tmp_path, monkeypatch):
    """A script puts the rows it prints into `results`; rendering needs no code for the new record."""
    monkeypatch.setattr(records, "RESULTS", tmp_path)
    load = records.Load(before=0.5)
    records.write_record("smoke", "tokens/s of two runs", {"batch": 32, "rows": [
        {"run": "ours", "tok/s": 201.43, "slowest_s": {"a": 1.5}}, {"run": "loop", "tok/s": 70.5}],
        "diffmean": {"auroc": 0.9, "n": 3}, "probe": {"auroc": 0.8, "n": 3}},
        how="python benchmarks/smoke.py", load=load)
    record = json.loads((tmp_path / "smoke.json").read_text())
    assert {"figure", "date", "machine", "load", "commit", "how", "results"} <= set(record)
    assert record["load"]["after"] is not None and record["load"]["cpus"] > 0
    text = records.render_record("smoke", record)
    assert "Record [`benchmarks/results/smoke.json`]" in text and "    python benchmarks/smoke.py" in text
    assert "| batch | 32 |" in text
    assert "| run | tok/s |\n|---|---|\n| ours | 201.4 |\n| loop | 70.5 |" in text
    assert "`rows, row 1 (ours): slowest_s`:" in text and "| a | 1.5 |" in text
    # Sibling dicts with the same keys: one table, a row each.
    assert "|  | auroc | n |\n|---|---|---|\n| diffmean | 0.9 | 3 |\n| probe | 0.8 | 3 |" in text


def _passages(text: str) -> list[tuple[int, str]]:
    """Paragraphs, list items and table rows outside code fences, each with its first line number."""
    passages, current, fenced = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        starts = not line.strip() or line.startswith(("```", "#", "- ", "| ")) or re.match(r"\d+\. ", line)
        if starts and current:
            passages.append((current[0][0], " ".join(part for _, part in current)))
            current = []
        if not fenced and line.strip() and not line.startswith(("```", "#")):
            current.append((number, line.strip()))
    if current:
        passages.append((current[0][0], " ".join(part for _, part in current)))
    return passages


def _names_a_record(passage: str) -> bool:
    named = RECORD_PATH.findall(passage)
    return NO_RECORD in passage or any((RESULTS / f"{name}.json").is_file() for name in named)


@pytest.mark.parametrize("path", [README, DOC, PROTOCOL], ids=lambda p: p.name)
def test_every_record_named_exists(path):
    named = set(RECORD_PATH.findall(path.read_text(encoding="utf-8")))
    missing = sorted(n for n in named if not (RESULTS / f"{n}.json").is_file())
    assert not missing, f"{path.name} names records that do not exist: {missing}"


def test_every_readme_passage_quoting_a_measurement_names_its_record():
    unnamed = []
    for line, passage in _passages(README.read_text(encoding="utf-8")):
        bare = passage
        for pattern in NOT_MEASURED:
            bare = pattern.sub("", bare)
        figures = FIGURE.findall(bare)
        if figures and not _names_a_record(passage):
            unnamed.append(f"README.md:{line}: {figures}")
    assert not unnamed, ("README figures that name no benchmarks/results/*.json record (name it, or say "
                         f"'{NO_RECORD}'): {unnamed}")


def test_the_readme_check_sees_a_figure_without_a_record():
    """The check above can fail: a figure naming no record is caught, one naming its record is not."""
    assert FIGURE.findall("a run takes 4 min 42 s") and not _names_a_record("a run takes 4 min 42 s")
    assert _names_a_record("4 min 42 s, `benchmarks/results/test_suite_2026-12-06.json`")
    assert not _names_a_record("4 min 42 s, `benchmarks/results/no_such_record.json`")


def test_every_benchmarks_section_is_record_backed_or_says_it_is_not():
    """Each section of docs/benchmarks.md shows a record block, names an existing record or says it is not from one
    (figures not yet re-measured, or a section that quotes none)."""
    sections = re.split(r"^## ", DOC.read_text(encoding="utf-8"), flags=re.M)[1:]
    bare = [section.splitlines()[0] for section in sections if section.splitlines()[0] != "Machine"
            and records.OPEN.search(section) is None and not _names_a_record(section)
            and not any(note in section.lower() for note in ("not yet regenerated from a record",
                                                               "not from a record"))]
    assert not bare, f"docs/benchmarks.md sections with figures from no record and no note saying so: {bare}"
