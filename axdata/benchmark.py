"""The dataset as a Hub benchmark: its `eval.yaml`, the task ids results name, and where a local copy came from.

The Hub registers a dataset repo as a benchmark through an `eval.yaml` at its root (name, description,
`evaluation_framework`, `tasks[]` with `id`, `config`, `split`); model repos publish scores for those tasks in
`.eval_results/*.yaml`, which the benchmark's leaderboard aggregates. Each model/layer config of an axbench
dataset defines up to three tasks — concept detection (mean AUROC over concepts, on the `latent` split),
steering (mean held-out steering score, 0–2, on the `steering` split) and, when the config has the RePS
`suppression` split, suppression (mean held-out suppression score, 0–2) — and `task_id` is the one place their
ids are made, for `eval.yaml` and `.eval_results` alike. A task is registered only for configs that hold its split.

`axbench data pull` records the repo, revision and commit a local copy came from (`hub_origin.json`), so a run
on that copy names exactly the data it used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from axdata.errors import InputError
from axdata.io import atomic_write_text

EVAL_FILE = "eval.yaml"
HUB_ORIGIN_FILE = "hub_origin.json"
# The Hub keeps a list of evaluation frameworks (huggingface.js packages/tasks/src/eval.ts); "axbench" must be
# added there before the Hub lists this benchmark (see README, "Publishing results").
EVALUATION_FRAMEWORK = "axbench"
TASKS = {
    "concept_detection": ("latent", "mean AUROC over concepts of each concept's detector, positives vs negatives "
                                    "(0-1, higher is better; 95% bootstrap interval over concepts in the notes)"),
    "steering": ("steering", "mean held-out steering score over concepts: the harmonic mean of the judge's concept, "
                             "instruction and fluency ratings (0-2, higher is better) at the factor chosen on the "
                             "selection half"),
    "suppression": ("suppression", "mean held-out suppression score over concepts: the harmonic mean of 2 minus "
                                   "the judge's concept rating, its instruction rating (against the plain "
                                   "instruction) and its fluency rating (0-2, higher is better) on instructions "
                                   "rewritten to invite the concept, at the factor chosen on the selection half"),
}


def task_id(kind: str, config: str) -> str:
    """`concept_detection-gemma-2-2b-it-l20`: one leaderboard per task kind and model/layer config."""
    if kind not in TASKS:
        raise InputError(f"Unknown benchmark task {kind!r}; the tasks are {', '.join(TASKS)}.")
    return f"{kind}-{config}"


def eval_yaml(name: str, splits_by_config: Mapping[str, Sequence[str]]) -> str:
    """The `eval.yaml` of a dataset whose configs hold these splits: a task per (kind, config) whose split it has."""
    tasks = [{"id": task_id(kind, config), "config": config, "split": split}
             for config, splits in splits_by_config.items() for kind, (split, _) in TASKS.items() if split in splits]
    description = ("Concept detection, steering and suppression with interpretability methods, as in AxBench (Wu "
                   "et al., ICML 2025) and RePS (Wu et al., 2025). One task per model/layer config and kind. " +
                   " ".join(f"{kind}: {about}." for kind, (_, about) in TASKS.items()))
    return yaml.safe_dump({"name": name, "description": description, "evaluation_framework": EVALUATION_FRAMEWORK,
                           "tasks": tasks}, sort_keys=False, allow_unicode=True, width=110)


@dataclass(frozen=True)
class HubOrigin:
    """Where a local dataset directory was pulled from."""

    repo_id: str
    revision: str | None  # what was asked for (a tag such as v1.0.0, a branch), None = main
    commit: str  # the commit it resolved to: what `.eval_results` record as the dataset revision


def write_hub_origin(origin: HubOrigin, directory: str | Path) -> Path:
    path = Path(directory) / HUB_ORIGIN_FILE
    atomic_write_text(path, json.dumps(asdict(origin), indent=2) + "\n")
    return path


def read_hub_origin(directory: str | Path) -> HubOrigin | None:
    path = Path(directory) / HUB_ORIGIN_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return HubOrigin(str(record["repo_id"]), record.get("revision"), str(record["commit"]))
