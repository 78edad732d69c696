"""Test-wide settings: the Hugging Face libraries talk to a local Hub stand-in, quiet progress bars, fixtures.

huggingface_hub, datasets, evaluate and transformers read their endpoint, token, offline flag and cache folders
once, at import. So this file, which pytest imports before any test module, starts the session's Hub stand-in
(`support.hub_standin.HubStandin`) and sets the environment first: the libraries then read the stand-in's
endpoint and a per-session HF_HOME the ordinary way, and no test patches a library constant. Nothing reaches
the real Hub; a lookup of a repo the stand-in does not hold is a quick 404 (the old HF_HUB_OFFLINE=1 existed
only to spare ~46 s of retries against an unreachable huggingface.co). Subprocesses inherit the environment.
Tests that need isolation use fresh repo ids (`HubEnv.repo_id`). The embedded models' converted copies stay in
AXBENCH_CACHE (~/.cache/axbench), outside HF_HOME, so they are not converted again each session.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from support.hub_standin import HubStandin

HUB_USER = "tester"
_HF_LIBRARIES = ("huggingface_hub", "datasets", "evaluate", "transformers")

if imported := [name for name in _HF_LIBRARIES if name in sys.modules]:
    raise RuntimeError(f"{', '.join(imported)} imported before tests/conftest.py set the Hub environment; "
                       "a plugin or an earlier conftest imports it too early.")

SESSION_HOME = Path(tempfile.mkdtemp(prefix="axbench-tests-"))
HUB = HubStandin(SESSION_HOME / "hub_standin", user=HUB_USER).start()
HF_HOME = SESSION_HOME / "hf_home"
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE",
             "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "HF_MODULES_CACHE", "HF_XET_CACHE",
             "HF_ASSETS_CACHE", "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH"):
    os.environ.pop(_key, None)  # a developer's own settings would point the libraries elsewhere
os.environ.update({
    "HF_ENDPOINT": HUB.endpoint,
    "HF_TOKEN": "hf_standin_token",
    "HF_HUB_DISABLE_XET": "1",  # with Xet, LFS uploads go to a CAS service the stand-in does not provide
    "HF_HOME": str(HF_HOME),  # every cache, the token file and evaluate's modules live under it
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
})
if _workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    # `make test` runs one pytest-xdist worker per core: each worker (torch, the embedded llama.cpp server and the
    # subprocesses it starts) computes on its share of the cores, instead of every worker spinning on all of them.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _workers)))

pytest_plugins = ["fixtures_llm", "fixtures_models", "fixtures_hub", "fixtures_runs"]


@pytest.fixture(scope="session")
def hub_server() -> HubStandin:
    """The session's Hub stand-in, which every Hugging Face client of this session talks to."""
    return HUB


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests first (a stable sort): pytest-xdist hands the longest work out before the short tests that
    fill the gaps, so the suite's wall time is not one long test started last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_unconfigure(config: pytest.Config) -> None:
    HUB.stop()
    shutil.rmtree(SESSION_HOME, ignore_errors=True)
