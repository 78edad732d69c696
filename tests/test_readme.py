"""The README's commands and Python snippets run as written.

Every line of a `bash` block and every `python` block is either run here, verbatim, or listed in SKIPPED with
the reason and the test that covers it instead; a new README command that is neither fails the first test.
The second test runs the README's path on real Concept10 data — import, info, push, pull, load_dataset,
train, infer latent, eval detect, infer steer, dictionary push — offline, against the local Hub stand-in. It
runs on a slice of Concept10 in AxBench's own layout (`concept10_slice`: 3 of its 10 concepts and 24 of its
shared negatives per genre, real rows): the test checks that the commands run as written, which the slice shows
at a third of the model time; the whole folder's import is tests/test_axbench_import.py's, and the science
checks (tests/test_methods_concept10.py, tests/test_reps_concept10.py) use all of it.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CONCEPT10 = SHARED / "data" / "axbench" / "concept10" / "prod_2b_l20_v1"

_CURATION = "needs an Argilla server; tests/test_curation_server.py runs these commands against a local one"
SKIPPED = {
    "make demo": "`make demo` is set-up plus `axbench demo`, which tests/test_cli.py runs end to end",
    "make test": "this test suite",
    "axbench run my-run.yaml": "my-run.yaml is the reader's own config; `axbench run` is run by tests/test_cli.py "
                               "(the demo) and tests/test_run_pipeline.py",
    "axbench demo --output-dir": "tests/test_cli.py runs exactly this (with a temporary --output-dir)",
    "axbench run configs/paper/": "needs a GPU, the Gemma weights and an OpenAI key",
    "accelerate launch --multi_gpu": "needs GPUs (and a second machine); the same code path runs under torchrun "
                                     "in tests/test_distributed.py",
    "torchrun --standalone --nproc_per_node 2 $(which axbench) infer latent": "tests/test_distributed.py runs "
                                     "infer latent (and train, infer steer, run) under exactly this launcher",
    "vllm serve": "needs a GPU and vLLM; the client's OpenAI-compatible path is tested against local servers "
                  "in tests/test_llm_client.py",
    "axbench data generate my-run.yaml": "placeholders the reader writes; generation is tested by "
                                         "tests/test_generation_stage.py and tests/test_written_examples.py",
    "axbench train reft-r1": "three epochs on Concept10 take minutes on a CPU; ReFT-r1 is trained in tests/test_methods.py",
    "axbench train reps": "trains for minutes on a CPU; tests/test_trainers.py and tests/test_reps_concept10.py "
                          "train every RePS-family method",
    "axbench infer steer --result dicts/reps": "needs the RePS dictionary of the line above",
    "axbench train sae-filtered --data": "needs an SAE of SmolLM2 (none is released offline); "
                                         "tests/test_sae_selection.py trains sae-filtered from synthetic SAELens "
                                         "and GemmaScope SAEs, also in `axbench run`",
    "export ARGILLA_API_URL": _CURATION,
    "axbench curate": _CURATION,
    "axbench eval report runs/demo": _CURATION + " (the report's agreement section: tests/test_curation.py)",
    "axbench metrics push my-org": "publishing: tests/test_metric_modules.py and tests/test_publish.py run these "
                                   "against the local Hub stand-in",
    "axbench data pull my-org/concept10 data/c10": "the pull above, into another folder (tests/test_publish.py)",
    "axbench eval report runs/my-run": "runs/my-run is the reader's run; tests/test_publish.py reports on a run",
    "axbench eval push runs/my-run": "pushing a reader's run; tests/test_publish.py runs it on the stand-in",
    "axbench leaderboard push runs/": "the reader's runs; tests/test_publish.py pushes a leaderboard to the stand-in",
    "axbench leaderboard show my-org/": "needs the leaderboard above; tests/test_publish.py rebuilds the page",
    "axbench dictionary push dicts/diffmean my-org/smollm2-l10-diffmean --eval-results":
        "needs the reader's run; tests/test_publish.py pushes a dictionary with its results",
    "from axdata.builders import read_concepts, read_split": "trains ReFT-r1 on Concept10 for minutes on a CPU; "
                                                             "tests/test_registry.py and tests/test_methods.py "
                                                             "make the same calls",
    "from axmethods.trainers import RePSConfig": "a fragment (target, preference_df and concepts are the reader's); "
                                                 "tests/test_trainers.py makes the same calls",
    "from axdata.llm import ChatRequest": "needs an OpenAI key; tests/test_llm_client.py makes the same calls "
                                                 "against a local server",
}

# Run by test_readme_paths_run_as_written, in this order; cwd "work" has ../shared beside it, "root" is the repo.
RUN_IN_WORK = [
    "axbench data import ../shared/data/axbench/concept10/prod_2b_l20_v1 --out data/concept10 --dataset-config gemma-2-2b-it-l20",
    "axbench data info data/concept10",
    "axbench data push data/concept10 my-org/concept10 --version 1.0.0",
    "axbench data pull my-org/concept10 data/pulled --revision v1.0.0",
    'from datasets import load_dataset\nds = load_dataset("my-org/concept10", "gemma-2-2b-it-l20", split="latent")',
    "axbench train diffmean --data data/concept10 --model smollm2-135m-instruct --layer 10 --out dicts/diffmean",
    "axbench infer latent --result dicts/diffmean --data data/concept10 --out latent.parquet",
    "axbench eval detect latent.parquet",
    "axbench infer steer --result dicts/diffmean --data data/concept10 --factors 2 --max-new-tokens 16 --out steering.parquet",
    "axbench dictionary output-score dicts/diffmean",
    "axbench dictionary push dicts/diffmean my-org/smollm2-l10-diffmean",
    "import torch\nfrom axmethods.dictionary import SteeringDictionary",  # the dictionary above, as pyvene
    "axbench train bipo --list-settings",
    "axbench train sae-filtered --list-settings",
    "axbench train hypersteer --data data/concept10 --model smollm2-135m-instruct --layer 10 --out dicts/hypersteer "
    "--set max_steps=2 --set held_out_concepts=[8,9]",
    "axbench dictionary from-hypernet dicts/hypersteer --concepts data/concept10/gemma-2-2b-it-l20/concepts.jsonl "
    "--out dicts/from-hypernet",
]
RUN_IN_ROOT = [
    "axbench config show configs/paper/2b-l20.yaml --set run.protocol=reference",
    "axbench config show configs/paper/2b-l20-reps-suppress.yaml",
    "from axeval.rules import check",
    "import evaluate",
    "from axmethods.models import load_target_model",
]
# Run by test_readme_conversion_runs_as_written (fast, no data checkout needed) in a folder holding a tiny dump in
# AxBench's own layout (tests/axbench_dumps.py), so the layer comes from the dump's config.json as it would.
CONVERT_AXBENCH = ("axbench dictionary convert-axbench axbench_dump/train dicts/converted --method DiffMean "
                   "--base-model google/gemma-2-2b-it")


def readme_items() -> list[str]:
    """Every command line of the bash blocks (comments dropped) and every python block (whole)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    items: list[str] = []
    for language, body in re.findall(r"```(\w+)\n(.*?)```", text, re.S):
        if language == "python":
            items.append(body.strip())
        elif language == "bash":
            for line in body.splitlines():
                command = re.sub(r"\s+#\s.*$", "", line).strip()
                if command and not command.startswith("#"):
                    items.append(command)
    return items


def _matches(item: str, entry: str) -> bool:
    # A command must be the README's line exactly; a python block is named by its first line(s).
    return item == entry or ("\n" in item and item.startswith(entry))


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    items = readme_items()
    assert len(items) > 20
    run = (*RUN_IN_WORK, *RUN_IN_ROOT, CONVERT_AXBENCH)
    unaccounted = [item for item in items if not any(_matches(item, e) for e in run)
                   and not any(item.startswith(prefix) for prefix in SKIPPED)]
    assert not unaccounted, f"README commands neither run by this test nor skipped with a reason: {unaccounted}"
    for entry in run:  # what this test runs is still in the README, verbatim
        assert any(_matches(item, entry) for item in items), f"no longer in the README: {entry!r}"


def _run(item: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the README's text (not this file's copy) in `cwd`: an `axbench` line with the CLI's own entry point
    and argv, a Python block with exec — in this process, so the model and libraries load once for all of them."""
    block = next(i for i in readme_items() if _matches(i, item))
    monkeypatch.chdir(cwd)
    if block.startswith("axbench "):
        from typer.testing import CliRunner

        from axeval.cli import app

        result = CliRunner().invoke(app, shlex.split(block)[1:], terminal_width=80)
        assert result.exit_code == 0, f"README command failed: {block}\n{result.output[-3000:]}\n{result.exception!r}"
        return result.output
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    return ""


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not CONCEPT10.is_dir(), reason=f"AxBench Concept10 data not found at {CONCEPT10} (shared data "
                                                   "checkout absent); the README's commands import it.")
def test_readme_paths_run_as_written(tmp_path, hub_env, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    # The README runs from a checkout with ../shared beside it; here ../shared holds the Concept10 slice.
    concept10_slice(CONCEPT10, tmp_path / "shared" / CONCEPT10.relative_to(SHARED))
    outputs = {}
    for item in RUN_IN_WORK:  # each command's time is printed (pytest -s) for whoever trims this test
        started = time.perf_counter()
        outputs[item] = _run(item, work, monkeypatch)
        print(f"{time.perf_counter() - started:7.1f} s  {item.splitlines()[0][:100]}")
    for item in RUN_IN_ROOT:
        _run(item, ROOT, monkeypatch)

    assert "steering" in outputs[RUN_IN_WORK[0]]  # the import builds the steering split
    detect = outputs["axbench eval detect latent.parquet"]
    assert "diffmean" in detect and "AUROC" in detect
    assert max(len(line) for line in detect.splitlines()) <= 80
    assert (work / "steering.parquet").exists() and (work / "dicts" / "diffmean").is_dir()


# Concept 0 and the two the README's HyperSteer command holds out (8, 9), so every command has its concepts.
SLICE_CONCEPTS, SLICE_NEGATIVES_PER_GENRE = (0, 8, 9), 24


def concept10_slice(source: Path, out: Path) -> None:
    """`source` (AxBench's generate/ + inference/ layout) with only SLICE_CONCEPTS and the first
    SLICE_NEGATIVES_PER_GENRE shared negatives (concept_id -1) of each genre, written in the same layout at `out`."""
    import json

    import pandas as pd

    (out / "generate").mkdir(parents=True)
    (out / "inference").mkdir()
    metadata = [line for line in (source / "generate" / "metadata.jsonl").read_text().splitlines()
                if json.loads(line)["concept_id"] in SLICE_CONCEPTS]
    (out / "generate" / "metadata.jsonl").write_text("\n".join(metadata) + "\n")
    train = pd.read_parquet(source / "generate" / "train_data.parquet")
    negatives = train[train["concept_id"] == -1].groupby("concept_genre").head(SLICE_NEGATIVES_PER_GENRE)
    pd.concat([negatives, train[train["concept_id"].isin(SLICE_CONCEPTS)]]).to_parquet(
        out / "generate" / "train_data.parquet")
    latent = pd.read_parquet(source / "inference" / "latent_eval_data.parquet")
    latent[latent["concept_id"].isin(SLICE_CONCEPTS)].to_parquet(out / "inference" / "latent_eval_data.parquet")


def test_readme_conversion_runs_as_written(tmp_path, monkeypatch):
    from axbench_dumps import write_axbench_dump

    from axmethods.dictionary import SteeringDictionary

    write_axbench_dump(tmp_path / "axbench_dump", method="DiffMean", layer=20)
    output = _run(CONVERT_AXBENCH, tmp_path, monkeypatch)
    assert "Converted 3 concepts" in output
    converted = SteeringDictionary.load(tmp_path / "dicts" / "converted")
    assert (converted.layer, converted.base_model, converted.method) == (20, "google/gemma-2-2b-it", "DiffMean")
