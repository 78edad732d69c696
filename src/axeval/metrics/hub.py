"""Publish the metric modules as Hub Space repos, so `evaluate.load("ORG/steering")` finds them.

A metric Space holds `<name>.py` (the module), `README.md` (the metric card, whose front matter makes it a
Gradio Space), `requirements.txt` and `app.py` (evaluate's standard widget). The module imports the plain
functions from `axeval`, so the requirements name the package that provides them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

logger = logging.getLogger(__name__)

METRICS_DIR = Path(__file__).parent
METRIC_NAMES = ("concept_detection", "steering")
DEFAULT_REQUIREMENT = "axbench"
_BASE_REQUIREMENTS = ("evaluate>=0.4.6", "datasets", "pandas", "numpy", "scikit-learn")
_APP = """\
import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("{repo_id}")
launch_gradio_widget(module)
"""


@dataclass(frozen=True)
class PushedMetric:
    name: str
    repo_id: str
    commit_url: str


def metric_files(name: str, repo_id: str, requirement: str = DEFAULT_REQUIREMENT) -> dict[str, bytes]:
    """The files of the Space for metric `name`, keyed by their path in the repo."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; the metrics are {', '.join(METRIC_NAMES)}.")
    folder = METRICS_DIR / name
    return {
        f"{name}.py": (folder / f"{name}.py").read_bytes(),
        "README.md": (folder / "README.md").read_bytes(),
        "requirements.txt": "\n".join((*_BASE_REQUIREMENTS, requirement, "")).encode(),
        "app.py": _APP.format(repo_id=repo_id).encode(),
    }


def push_metrics(
    org: str,
    *,
    names: tuple[str, ...] = METRIC_NAMES,
    token: str | None = None,
    private: bool = False,
    requirement: str = DEFAULT_REQUIREMENT,
    api: HfApi | None = None,
) -> list[PushedMetric]:
    """Create (or update) the Space `ORG/<name>` of each metric with one commit each.

    `requirement` is the pip requirement that provides `axeval` on the Space (a version pin, a wheel URL or
    `git+https://…`).
    """
    if not org or "/" in org:
        raise ValueError(f"push_metrics: org={org!r} must be a user or organisation name without '/'.")
    api = api or HfApi(token=token)
    pushed = []
    for name in names:
        repo_id = f"{org}/{name}"
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        operations = [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=content)
            for path, content in metric_files(name, repo_id, requirement).items()
        ]
        commit = api.create_commit(
            repo_id, operations, repo_type="space", commit_message=f"Upload the AxBench {name} metric"
        )
        logger.info("Pushed the %s metric to the Space %s (%s).", name, repo_id, commit.commit_url)
        pushed.append(PushedMetric(name, repo_id, commit.commit_url))
    return pushed
