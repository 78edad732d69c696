"""The evaluate modules: loaded by path offline, and by id from a Space repo on the local Hub stand-in."""

from __future__ import annotations

import math
import re
from pathlib import Path

import evaluate
import pytest
from huggingface_hub import HfApi

import axeval.metrics.hub as metric_hub
from axeval.judge_templates import JUDGE_TEMPLATE_HASH, TEMPLATE_HASHES
from axeval.metrics.hub import METRICS_DIR, push_metrics

STEERING_INPUTS = {
    "concept_ids": [0, 0, 0, 0, 1, 1],
    "prompt_ids": [0, 0, 1, 1, 0, 1],
    "halves": ["selection", "selection", "heldout", "heldout", "selection", "heldout"],
    "factors": [1.0, 2.0, 1.0, 2.0, 1.0, 1.0],
    "concept_ratings": [1, 2, 2, 2, 2, None],
    "instruction_ratings": [2, 2, 2, 2, 2, 2],
    "fluency_ratings": [2, 2, 1, 2, 2, 2],
}


def test_concept_detection_loads_by_path_and_matches_the_plain_function():
    detection = evaluate.load(str(METRICS_DIR / "concept_detection"))
    results = detection.compute(
        scores=[0.9, 0.7, 0.2, 0.1, 0.8, 0.6, 0.5, 0.65, 0.3, 0.95, 0.0, 0.0],
        categories=["positive", "positive", "negative", "negative", "positive", "positive", "negative", "negative",
                    "hard negative", "negative", "negative", "negative"],
        concept_ids=[0, 0, 0, 0, 1, 1, 1, 1, 1, -1, -1, -1],
        imbalance=True, n_resamples=200, seed=1)
    assert results["per_concept_auroc"] == {0: 1.0, 1: 0.75}
    assert results["auroc"] == pytest.approx(0.875)
    assert results["auroc_ci_low"] <= results["auroc"] <= results["auroc_ci_high"]
    assert (results["n_concepts"], results["n_hard_negatives"]) == (2, 1)
    # As AxBench: each concept's own rows plus the shared pool 0.95, 0, 0.
    # Concept 0: positives 0.9, 0.7, negatives 0.2, 0.1 → best F1 at 0.7: P 2/3, R 1 → 0.8.
    # Concept 1: positives 0.8, 0.6, negatives 0.5, 0.65, hard negative 0.3 → best at 0.6: P 2/4, R 1 → 2/3.
    assert results["imbalance_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_steering_loads_by_path_and_counts_parse_failures():
    steering = evaluate.load(str(METRICS_DIR / "steering"))
    results = steering.compute(**STEERING_INPUTS, n_resamples=100)
    # Concept 0: factor 2.0 wins on selection (2 vs 1.5); held-out at 2.0 → 2.0. Concept 1: its held-out row
    # failed to parse → undefined, counted, and not averaged in as 0.
    assert results["chosen_factors"][0] == 2.0
    assert results["score"] == 2.0
    assert (results["n_parse_failures"], results["n_undefined"], results["n_concepts"]) == (1, 1, 2)


def test_suppression_mode_through_the_module():
    steering = evaluate.load(str(METRICS_DIR / "steering"))
    results = steering.compute(concept_ids=[0, 0], prompt_ids=[0, 1], halves=["selection", "heldout"],
                               factors=[-1.0, -1.0], concept_ratings=[0, 0], instruction_ratings=[2, 2],
                               fluency_ratings=[2, 2], suppression=True)
    assert results["score"] == 2.0


def test_metric_card_names_the_current_judge_templates():
    card = (METRICS_DIR / "steering" / "README.md").read_text(encoding="utf-8")
    assert JUDGE_TEMPLATE_HASH in card, "judge templates changed: update the template hash in the steering card"
    assert all(value in card for value in TEMPLATE_HASHES.values())
    for section in ("## Metric Description", "### Inputs", "### Output Values", "#### Values from Popular Papers",
                    "## Limitations and Bias", "## Citation"):
        assert section in card
        assert section in (METRICS_DIR / "concept_detection" / "README.md").read_text(encoding="utf-8")


def test_push_metrics_then_load_by_id_from_the_hub(hub_env):
    org = hub_env.user
    pushed = push_metrics(org, token=hub_env.token)
    assert [p.repo_id for p in pushed] == [f"{org}/concept_detection", f"{org}/steering"]
    files = set(HfApi(endpoint=hub_env.endpoint, token=hub_env.token).list_repo_files(f"{org}/steering",
                                                                                      repo_type="space"))
    assert {"steering.py", "axbench_core.py", "README.md", "requirements.txt", "app.py"} <= files
    steering = evaluate.load(f"{org}/steering")
    assert steering.compute(**STEERING_INPUTS)["score"] == 2.0
    detection = evaluate.load(f"{org}/concept_detection")
    assert detection.compute(scores=[1.0, 0.0], categories=["positive", "negative"], concept_ids=[0, 0])["auroc"] == 1.0
    # Pushing again updates the Spaces in place.
    assert len(push_metrics(org, token=hub_env.token, names=("steering",))) == 1


def test_push_metrics_rejects_a_repo_id_as_org():
    with pytest.raises(ValueError, match="without '/'"):
        push_metrics("org/steering")


DETECTION_INPUTS = {
    "scores": [0.9, 0.7, 0.2, 0.1, 0.8, 0.6, 0.5, 0.65, 0.3, 0.4, 0.55, 0.05],
    "categories": ["positive", "positive", "negative", "negative", "positive", "positive", "negative", "negative",
                   "hard negative", "negative", "negative", "negative"],
    "concept_ids": [0, 0, 0, 0, 1, 1, 1, 1, 1, -1, -1, -1],
}
# Run where the toolkit cannot be imported: the Space's module must work from its own files.
_WITHOUT_TOOLKIT = """
import json, sys
for package in ("axeval", "axdata", "axmethods"):
    sys.modules[package] = None  # any import of the toolkit now fails
import evaluate
space = sys.argv[1]
steering = evaluate.load(space + "/steering").compute(**json.loads(sys.argv[2]))
detection = evaluate.load(space + "/concept_detection").compute(imbalance=True, **json.loads(sys.argv[3]))
print(json.dumps({"steering": steering, "detection": detection}))
"""


def _numbers_elsewhere(python: str, script: str, location: str, cwd: Path, env: dict | None = None) -> dict:
    """Run `script` (it loads both metrics from `location` and prints their results as JSON) with `python`; its
    numbers must equal the toolkit's own modules' on the same inputs. Returns them."""
    import json
    import subprocess

    result = subprocess.run([python, "-c", script, location, json.dumps(STEERING_INPUTS), json.dumps(DETECTION_INPUTS)],
                            capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    outside = json.loads(result.stdout.strip().splitlines()[-1])
    inside_steering = evaluate.load(str(METRICS_DIR / "steering")).compute(**STEERING_INPUTS)
    inside_detection = evaluate.load(str(METRICS_DIR / "concept_detection")).compute(imbalance=True,
                                                                                      **DETECTION_INPUTS)
    assert outside["steering"] == json.loads(json.dumps(inside_steering))
    assert outside["detection"] == json.loads(json.dumps(inside_detection))
    return outside


def _write_spaces(root: Path) -> Path:
    for name in metric_hub.METRIC_NAMES:
        for path, content in metric_hub.metric_files(name, f"org/{name}").items():
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / path).write_bytes(content)
    return root


def test_space_files_are_self_contained_and_agree_with_the_toolkit(tmp_path: Path):
    """The Space's module and its generated helper need only evaluate, datasets, numpy, pandas, scipy and
    scikit-learn: loaded where the toolkit cannot be imported, they give the toolkit's own numbers."""
    import sys

    files = metric_hub.metric_files("steering", "org/steering")
    assert set(files) == {"steering.py", "axbench_core.py", "README.md", "requirements.txt", "app.py"}
    requirements = files["requirements.txt"].decode().split()
    assert not [r for r in requirements if "axbench" in r or "axeval" in r]
    assert b'evaluate.load("org/steering")' in files["app.py"]
    assert b"from .axbench_core import" in files["steering.py"] and b"from axeval" not in files["steering.py"]
    assert b"Generated from the axbench toolkit" in files["axbench_core.py"]

    outside = _numbers_elsewhere(sys.executable, _WITHOUT_TOOLKIT, str(_write_spaces(tmp_path / "spaces")), tmp_path)
    assert not math.isnan(outside["detection"]["auroc"])


def test_the_generator_refuses_sources_it_cannot_inline(monkeypatch):
    monkeypatch.setitem(metric_hub.SPACE_SOURCES, "steering", ("axeval.stats", "axeval.steering"))
    with pytest.raises(ValueError, match="check_protocol.*not in its helper"):
        metric_hub.space_module_source("steering")  # the module imports axeval.protocol, left out here
    monkeypatch.setitem(metric_hub.SPACE_SOURCES, "steering", ("axeval.stats", "axeval.detection", "axeval.steering"))
    with pytest.raises(ValueError, match="both define"):
        metric_hub.core_source("steering")


_CLEAN_VENV_CHECK = """
import importlib.util, json, sys
assert importlib.util.find_spec("axeval") is None, "the clean virtualenv must not have the toolkit"
import evaluate
org = sys.argv[1]
steering = evaluate.load(org + "/steering").compute(**json.loads(sys.argv[2]))
detection = evaluate.load(org + "/concept_detection").compute(imbalance=True, **json.loads(sys.argv[3]))
print(json.dumps({"steering": steering, "detection": detection}))
"""


# pip's words for an index it cannot reach at all (DNS, routing, a refused connection, a proxy). Anything else —
# "Could not find a version", "No matching distribution", a failed build — means the Space's requirements.txt is
# broken, and the clean-venv test must fail on it rather than skip.
_NO_NETWORK = ("NewConnectionError", "NameResolutionError", "Failed to establish a new connection",
               "Network is unreachable", "Temporary failure in name resolution", "Name or service not known",
               "No route to host", "ConnectTimeoutError", "ProxyError")


def says_no_network(pip_stderr: str) -> bool:
    """True when pip failed for want of a network: a connection error, and no index answered with versions (a
    retried connection that then got a version list, followed by a failure, is a broken requirement)."""
    return any(marker in pip_stderr for marker in _NO_NETWORK) and not re.search(r"from versions: (?!none)",
                                                                                 pip_stderr)


@pytest.mark.parametrize(("stderr", "offline"), [
    # pip 26 with an unresolvable index host, as printed:
    ("WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken "
     "by 'NameResolutionError(\"HTTPSConnection(host='pypi.invalid', port=443): Failed to resolve 'pypi.invalid' "
     "([Errno -2] Name or service not known)\")': /simple/evaluate/\nERROR: Could not find a version that satisfies "
     "the requirement evaluate (from versions: none)\nERROR: No matching distribution found for evaluate", True),
    ("WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(...: Failed to establish a "
     "new connection: [Errno -3] Temporary failure in name resolution')': /simple/pip/\nERROR: No matching "
     "distribution found for pip", True),
    ("ERROR: Could not find a version that satisfies the requirement evaluate==99.0 (from versions: 0.4.0, 0.4.1)\n"
     "ERROR: No matching distribution found for evaluate==99.0", False),
    ("ERROR: Failed building wheel for pyarrow", False),
    ("WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError(...)': /simple/evaluate/\n"
     "ERROR: Could not find a version that satisfies the requirement evaluate==99.0 (from versions: 0.4.0)", False),
])
def test_only_a_missing_network_excuses_a_failed_install(stderr: str, offline: bool) -> None:
    assert says_no_network(stderr) is offline


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pushed_spaces_install_and_load_in_a_clean_virtualenv(hub_env, tmp_path: Path):
    """As a new user would: a fresh virtualenv, `pip install -r requirements.txt` of the pushed Space (from the
    package index), `evaluate.load("ORG/steering")` from the Hub — and the project's numbers."""
    import os
    import subprocess
    import sys

    from huggingface_hub import hf_hub_download

    org = hub_env.user
    push_metrics(org, token=hub_env.token)
    requirements = hf_hub_download(f"{org}/steering", "requirements.txt", repo_type="space")
    assert Path(hf_hub_download(f"{org}/concept_detection", "requirements.txt", repo_type="space")).read_text() == \
        Path(requirements).read_text()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", requirements],
                             capture_output=True, text=True, timeout=900)
    if install.returncode != 0 and says_no_network(install.stderr):
        pytest.skip(f"no network: the package index is unreachable from this machine: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr[-3000:]  # with a network, any pip error is a broken Space
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    _numbers_elsewhere(str(python), _CLEAN_VENV_CHECK, org, tmp_path, env=env)
