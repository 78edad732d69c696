"""Publish the metric modules as Hub Space repos, so `evaluate.load("ORG/steering")` finds them anywhere.

A metric Space holds `<name>.py` (the module), `axbench_core.py` (the plain functions it calls),
`README.md` (the metric card, whose front matter makes it a Gradio Space), `requirements.txt` and `app.py`
(evaluate's standard widget). It needs only evaluate, datasets, numpy, pandas, scipy and scikit-learn from
PyPI, not this toolkit: both Python files are *generated* from `axeval` at push time — the helper is the
source of the `axeval` modules the metric uses (`SPACE_SOURCES`), with their imports of each other dropped and
the few schema constants they use copied in; the module is ours with `from axeval.… import` turned into
`from .axbench_core import` (evaluate downloads a module's relative imports from the same repo). One
implementation, never two copies edited by hand.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from axdata.errors import InputError

logger = logging.getLogger(__name__)

METRICS_DIR = Path(__file__).parent
METRIC_NAMES = ("concept_detection", "steering")
CORE_FILE = "axbench_core.py"
# The axeval modules each Space's helper is made of, dependencies first.
SPACE_SOURCES = {
    "concept_detection": ("axeval.stats", "axeval.detection"),
    "steering": ("axeval.stats", "axeval.protocol", "axeval.steering"),
}
_INTERNAL = ("axeval", "axdata", "axmethods")
_CONSTANTS_MODULE = "axdata.schema"  # simple constants the sources may import (copied into the helper)
REQUIREMENTS = ("evaluate>=0.4.6", "datasets", "numpy", "pandas", "scipy", "scikit-learn")
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


def _module_source(module: str) -> tuple[str, ast.Module]:
    path = importlib.util.find_spec(module).origin  # type: ignore[union-attr]
    source = Path(path).read_text(encoding="utf-8")
    return source, ast.parse(source)


def _constant(name: str) -> str:
    """`NAME = value` from the constants module, refused unless the value is a plain literal."""
    source, tree = _module_source(_CONSTANTS_MODULE)
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            ast.literal_eval(node.value)  # a literal, or ValueError: the helper must not need the toolkit
            return ast.get_source_segment(source, node)
    raise ValueError(f"{_CONSTANTS_MODULE} has no constant {name!r} for the metric helper.")


def core_source(name: str) -> str:
    """The helper of metric `name`: its `SPACE_SOURCES` modules in order, without their internal imports."""
    modules = SPACE_SOURCES[name]
    body: list[str] = []
    constants: list[str] = []
    seen: dict[str, str] = {}
    for module in modules:
        source, tree = _module_source(module)
        lines = source.splitlines()
        dropped: set[int] = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module == "__future__" or
                                                      (node.module or "").split(".")[0] in _INTERNAL):
                dropped.update(range(node.lineno - 1, node.end_lineno))
                if node.module == _CONSTANTS_MODULE:
                    constants += [alias.name for alias in node.names]
                elif node.module != "__future__" and node.module not in modules[:modules.index(module)]:
                    raise ValueError(f"{module} imports {node.module}, which the {name} helper does not include; "
                                     "add it to SPACE_SOURCES before it.")
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in _INTERNAL for a in node.names):
                raise ValueError(f"{module}: `import {node.names[0].name}` cannot be inlined; use `from … import`.")
            elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Assign):
                for defined in ([node.name] if not isinstance(node, ast.Assign) else
                                [t.id for t in node.targets if isinstance(t, ast.Name)]):
                    if defined in seen and defined != "logger":
                        raise ValueError(f"{module} and {seen[defined]} both define {defined!r}; the {name} helper "
                                         "would keep only one.")
                    seen[defined] = module
        body += [f"# ---- from {module} " + "-" * max(0, 100 - len(module)),
                 *(line for index, line in enumerate(lines) if index not in dropped), ""]
    header = [f'"""Generated from the axbench toolkit ({", ".join(modules)}) for the {name} metric Space: do not edit;',
              'edit those modules and push the metrics again (`axbench metrics push`)."""', "",
              "from __future__ import annotations", "",
              *(_constant(constant) for constant in dict.fromkeys(constants)), ""]
    return "\n".join(header + body).rstrip() + "\n"


def space_module_source(name: str, core: str | None = None) -> str:
    """The metric module with its `axeval` imports pointed at the Space's helper (`core`: its source, if made)."""
    source = (METRICS_DIR / name / f"{name}.py").read_text(encoding="utf-8")
    rewritten, count = re.subn(r"^from axeval\.\w+ import ", f"from .{CORE_FILE[:-3]} import ", source, flags=re.M)
    if re.search(r"^\s*(from|import) (axeval|axdata|axmethods)\b", rewritten, flags=re.M) or not count:
        raise ValueError(f"The {name} module imports the toolkit in a way the Space generator cannot rewrite.")
    defined = {node.name if not isinstance(node, ast.Assign) else target.id
               for node in ast.parse(core or core_source(name)).body
               if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Assign)
               for target in (node.targets if isinstance(node, ast.Assign) else [node])
               if not isinstance(node, ast.Assign) or isinstance(target, ast.Name)}
    wanted = {alias.name for node in ast.parse(rewritten).body
              if isinstance(node, ast.ImportFrom) and node.module == CORE_FILE[:-3] for alias in node.names}
    if wanted - defined:
        raise ValueError(f"The {name} module imports {sorted(wanted - defined)}, not in its helper; add their "
                         "modules to SPACE_SOURCES.")
    return rewritten


def metric_files(name: str, repo_id: str) -> dict[str, bytes]:
    """The files of the Space for metric `name`, keyed by their path in the repo."""
    if name not in METRIC_NAMES:
        raise InputError(f"Unknown metric {name!r}; the metrics are {', '.join(METRIC_NAMES)}.")
    core = core_source(name)
    return {
        f"{name}.py": space_module_source(name, core).encode(),
        CORE_FILE: core.encode(),
        "README.md": (METRICS_DIR / name / "README.md").read_bytes(),
        "requirements.txt": "\n".join((*REQUIREMENTS, "")).encode(),
        "app.py": _APP.format(repo_id=repo_id).encode(),
    }


def push_metrics(
    org: str,
    *,
    names: tuple[str, ...] = METRIC_NAMES,
    token: str | None = None,
    private: bool = False,
    api: HfApi | None = None,
) -> list[PushedMetric]:
    """Create (or update) the Space `ORG/<name>` of each metric with one commit each."""
    if not org or "/" in org:
        raise InputError(f"push_metrics: org={org!r} must be a user or organisation name without '/'.")
    api = api or HfApi(token=token)
    pushed = []
    for name in names:
        repo_id = f"{org}/{name}"
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        operations = [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=content)
            for path, content in metric_files(name, repo_id).items()
        ]
        commit = api.create_commit(
            repo_id, operations, repo_type="space", commit_message=f"Upload the AxBench {name} metric"
        )
        logger.info("Pushed the %s metric to the Space %s (%s).", name, repo_id, commit.commit_url)
        pushed.append(PushedMetric(name, repo_id, commit.commit_url))
    return pushed
