"""Pytest fixtures that point the real `huggingface_hub`, `datasets` (and `evaluate`) clients at a local Hub.

`hub_server` (session) runs one `support.hub_standin.HubStandin`; `hub_env` (function) routes every client
call to it for the duration of one test and restores everything afterwards, so it coexists with tests that
keep the libraries offline (tests/conftest.py sets HF_HUB_OFFLINE=1 before they are imported).

The libraries read their endpoint, offline flag and cache folders into module constants at import time, so
setting environment variables inside a test is not enough: `hub_env` patches those constants (and the
endpoint of `huggingface_hub`'s module-level `HfApi` singleton, which backs `upload_file`, `create_repo` &
co.) as well as the environment (read at call time for the token, and by subprocesses).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.hub_standin import HubStandin

HUB_USER = "tester"
HUB_TOKEN = "hf_standin_token"


@dataclass
class HubEnv:
    """What a test needs to talk to the stand-in: the server (its request log), endpoint, token and home."""

    server: HubStandin
    endpoint: str
    token: str
    user: str
    home: Path

    def repo_id(self, name: str) -> str:
        """A fresh repo id under the test user: the server outlives tests, so names must not collide."""
        return f"{self.user}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubStandin]:
    with HubStandin(tmp_path_factory.mktemp("hub_standin"), user=HUB_USER) as server:
        yield server


def _rehome(module: Any, old_home: str, new_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repoint every path constant of `module` that lives under `old_home` (lock files, registries, caches)."""
    old = os.path.normpath(old_home)
    for name, value in list(vars(module).items()):
        if not name.isupper() or not isinstance(value, (str, Path)):
            continue
        text = os.path.normpath(str(value))
        if text == old or text.startswith(old + os.sep):
            moved = str(new_home) + text[len(old) :]
            monkeypatch.setattr(module, name, Path(moved) if isinstance(value, Path) else moved)


@pytest.fixture
def hub_env(
    hub_server: HubStandin, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HubEnv]:
    # Imported before patching so their import-time constants hold the session's values, restored afterwards.
    import datasets.config
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.hf_api
    from huggingface_hub import HfFileSystem

    endpoint = hub_server.endpoint
    home = tmp_path_factory.mktemp("hf_home")

    for key, value in {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": HUB_TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_EVALUATE_OFFLINE": "0",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_DATASETS_CACHE": str(home / "datasets"),
    }.items():
        monkeypatch.setenv(key, value)

    _rehome(hf_constants, hf_constants.HF_HOME, home, monkeypatch)
    for name, value in {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": hf_constants.HF_URL_HOSTS | {hub_server.host},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        # Set explicitly too: HF_HUB_CACHE & co. may come from their own variables, outside HF_HOME.
        "HF_HUB_CACHE": str(home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }.items():
        monkeypatch.setattr(hf_constants, name, value)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)

    _rehome(datasets.config, datasets.config.HF_CACHE_HOME, home, monkeypatch)
    for name, value in {
        "HF_ENDPOINT": endpoint,
        "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        # The dataset viewer's parquet export is a separate service (datasets-server.<host>) the stand-in lacks.
        "USE_PARQUET_EXPORT": False,
        "HF_DATASETS_CACHE": home / "datasets",
        "DOWNLOADED_DATASETS_PATH": home / "datasets" / "downloads",
        "EXTRACTED_DATASETS_PATH": home / "datasets" / "downloads" / "extracted",
    }.items():
        monkeypatch.setattr(datasets.config, name, value)

    # `import evaluate` costs seconds, so it is patched only when a test module has already imported it.
    evaluate_config = sys.modules.get("evaluate.config")
    if evaluate_config is not None:
        _rehome(evaluate_config, evaluate_config.HF_CACHE_HOME, home, monkeypatch)
        for name, value in {
            "HF_ENDPOINT": endpoint,
            "HF_LIST_ENDPOINT": endpoint + "/api/spaces?filter={type}",
            "HUB_EVALUATE_URL": endpoint + "/spaces/{path}/resolve/{revision}/{name}",
            "HF_EVALUATE_OFFLINE": False,
        }.items():
            monkeypatch.setattr(evaluate_config, name, value)

    # fsspec caches HfFileSystem instances per endpoint, with directory listings that outlive a test.
    HfFileSystem.clear_instance_cache()
    yield HubEnv(server=hub_server, endpoint=endpoint, token=HUB_TOKEN, user=HUB_USER, home=home)
    HfFileSystem.clear_instance_cache()
