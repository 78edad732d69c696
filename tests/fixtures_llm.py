"""LLM fixtures: the real embedded server (once per session) and a scripted fault server (per test)."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from axdata.llm.server import EmbeddedLLMServer, embedded_llm_server


@dataclass
class Reply:
    """One scripted HTTP answer of the fault server."""

    status: int = 200
    body: bytes | dict[str, Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def ok(text: str = "ok", prompt_tokens: int = 11, completion_tokens: int = 3) -> Reply:
    return Reply(
        200,
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "fault-model",
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
    )


def error(status: int, message: str = "boom", headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status, {"error": {"message": message, "type": "server_error", "code": status}}, headers or {}
    )


def rate_limited(retry_after: str = "0", header: str = "Retry-After") -> Reply:
    return error(429, "Rate limit reached", {header: retry_after})


def slow(delay_s: float) -> Reply:
    return Reply(200, ok("too late").body, delay_s=delay_s)


def malformed() -> Reply:
    return Reply(200, b'{"choices": [{"message": {"content": "trunc', {"Content-Type": "application/json"})


def rejects_response_format() -> Reply:
    return error(400, "response_format type json_schema is not supported by this model")


class FaultServer:
    """A stdlib OpenAI stand-in: POST /v1/chat/completions answers from a script, then with `default`.

    `requests` logs every chat request body; `max_in_flight` is the highest number handled at once.
    """

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.default: Reply = ok()
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str] = []  # the Authorization header of every POST
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.script.popleft() if self.script else self.default

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                # Always drain the body: with keep-alive, leftovers would corrupt the next request.
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _send(self, reply: Reply) -> None:
                payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                headers = {"Content-Type": "application/json"} | reply.headers
                try:
                    self.send_response(reply.status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up first: that is the point of a slow reply

            def do_POST(self) -> None:
                raw = self._body()
                server.authorizations.append(self.headers.get("Authorization", ""))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(error(404, f"no route {self.path}"))
                    return
                reply = server._next(json.loads(raw))
                try:
                    time.sleep(reply.delay_s)
                    self._send(reply)
                finally:
                    server._done()

            def do_GET(self) -> None:
                self._body()
                if self.path.rstrip("/") == "/v1/models":
                    self._send(
                        Reply(200, {"object": "list", "data": [{"id": "fault-model", "object": "model"}]})
                    )
                else:
                    self._send(error(404, f"no route {self.path}"))

        return Handler

    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    server = FaultServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[EmbeddedLLMServer]:
    """The real xllamacpp server with the embedded SmolLM2, started once for the whole test session (per
    pytest-xdist worker), on the worker's share of the cores (threads=None: OMP_NUM_THREADS, tests/conftest.py)."""
    pytest.importorskip("xllamacpp")
    with embedded_llm_server(n_parallel=2, n_ctx=2048, threads=None, startup_timeout_s=120) as server:
        yield server
