"""The `hub_env` fixture: what a test needs to talk to the session's local Hub stand-in.

tests/conftest.py starts the stand-in and points the real `huggingface_hub`, `datasets` and `evaluate` clients at
it through their ordinary environment variables before any of them is imported, so there is nothing to patch
here: `hub_env` only names the stand-in, its endpoint, token, user and HF_HOME for the test, and clears
`HfFileSystem`'s instance cache (its directory listings would otherwise outlive a test).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.hub_standin import HubStandin


@dataclass
class HubEnv:
    """What a test needs to talk to the stand-in: the server (its request log), endpoint, token and home."""

    server: HubStandin
    endpoint: str
    token: str
    user: str
    home: Path  # the session's HF_HOME: downloads and dataset caches land here, never in the user's cache

    def repo_id(self, name: str) -> str:
        """A fresh repo id under the test user: the server outlives tests, so names must not collide."""
        return f"{self.user}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def hub_env(hub_server: HubStandin) -> Iterator[HubEnv]:
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()
    yield HubEnv(server=hub_server, endpoint=os.environ["HF_ENDPOINT"], token=os.environ["HF_TOKEN"],
                 user=hub_server.store.user, home=Path(os.environ["HF_HOME"]))
    HfFileSystem.clear_instance_cache()
