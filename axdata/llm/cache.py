"""Content-addressed response cache in SQLite: a re-run answers from disk and makes zero calls.

Keys come from `ChatRequest.cache_key` (model + sampling params + messages + template hash + schema
+ sample index), never from a call counter, so hits do not depend on call order. Only successful
completions are stored; every write is its own transaction, so a killed run loses at most the
answer in flight.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path

from axdata.llm.types import Completion

logger = logging.getLogger(__name__)
# Longest answer text stored (characters); longer ones are used but not cached.
MAX_CACHED_CHARS = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    purpose TEXT NOT NULL,
    completion TEXT NOT NULL,
    created REAL NOT NULL
)
"""


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(_SCHEMA)

    def get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._conn.execute("SELECT completion FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        completion = Completion(**json.loads(row[0]))
        completion.cached = True
        completion.reused_cost_usd, completion.cost_usd, completion.answers = completion.cost_usd, 0.0, 0
        return completion

    def put(self, key: str, completion: Completion, purpose: str) -> None:
        if completion.dry_run:
            return
        if len(completion.text) > MAX_CACHED_CHARS:
            # No answer of ours is that long (max_tokens bounds it); a server that sends one must not fill the disk.
            logger.warning("Not caching a %d-character %r answer (over %d characters).", len(completion.text),
                           purpose, MAX_CACHED_CHARS)
            return
        stored = asdict(completion) | {"cached": False}
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (key, model, purpose, completion, created) VALUES (?, ?, ?, ?, ?)",
                (key, completion.model, purpose, json.dumps(stored, ensure_ascii=False), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
