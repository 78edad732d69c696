"""A real Argilla server for the session: argilla-server 2.8 + osmem-server + redis on free local ports.

Needs `redis-server` (installed with apt-get when missing: the CI runs as root) and the server's own venv
`.argilla-venv` in the repository root (created once, ~1 minute, then reused; it needs `click<8.2`, which
conflicts with the axbench environment). Nothing is skipped: a failed install or start fails the test
with the reason and the server logs.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from axeval.curation.local_server import LocalArgilla, LocalArgillaError, ensure_server_venv

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_VENV = REPO_ROOT / ".argilla-venv"
TIMINGS: dict[str, float] = {}


def _ensure_redis() -> None:
    if shutil.which("redis-server"):
        return
    began = time.monotonic()
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "redis-server"]):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.fail(f"redis-server is missing and `{' '.join(command)}` failed ({result.returncode}):\n"
                        f"{(result.stdout + result.stderr)[-3000:]}\nInstall redis-server by hand and re-run.")
    TIMINGS["redis_install_s"] = time.monotonic() - began


@pytest.fixture(scope="session")
def argilla_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalArgilla]:
    _ensure_redis()
    try:
        TIMINGS["server_venv_install_s"] = ensure_server_venv(SERVER_VENV)
    except LocalArgillaError as error:
        pytest.fail(f"Could not create the Argilla server venv {SERVER_VENV}:\n{error}")
    server = LocalArgilla(home=tmp_path_factory.mktemp("argilla_home"), venv=SERVER_VENV)
    try:
        server.start()
    except LocalArgillaError as error:
        pytest.fail(f"The local Argilla server did not start:\n{error}")
    TIMINGS["server_start_s"] = server.start_seconds
    print(f"\nArgilla server at {server.api_url}; timings: {TIMINGS}")
    try:
        yield server
    finally:
        server.stop()
