"""The embedded server's lifecycle: child process stopped on exit and on error, clear startup errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import axdata
from axdata.llm import ChatRequest, EmbeddedServerError, LLMConfig, SamplingParams, open_llm
from axdata.llm.server import embedded_llm_server, free_port

pytestmark = pytest.mark.slow
pytest.importorskip("xllamacpp")

SMALL = {"n_parallel": 1, "n_ctx": 1024, "threads": 1}


def answers(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_child_is_stopped_on_exit() -> None:
    with embedded_llm_server(**SMALL) as server:
        process = server.process
        assert process is not None and process.poll() is None
        assert server.base_url.startswith("http://127.0.0.1:") and server.model == "smollm2-135m-instruct"
        assert answers(server.base_url)
    assert process.returncode == 0  # SIGTERM handled: a clean stop
    assert not answers(server.base_url)


def test_child_is_stopped_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError, match="body failed"), embedded_llm_server(**SMALL) as server:
        process = server.process
        raise RuntimeError("body failed")
    assert process is not None and process.returncode is not None


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(EmbeddedServerError, match="Unknown embedded model 'gpt-4o'.*smollm2-135m-instruct"):
        embedded_llm_server("gpt-4o").start()


def test_busy_port_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(EmbeddedServerError, match=f"Port {sock.getsockname()[1]} .* busy"):
            embedded_llm_server(port=sock.getsockname()[1]).start()


def test_startup_timeout_reports_the_log_and_stops_the_child(tmp_path) -> None:
    server = embedded_llm_server(**SMALL, startup_timeout_s=0.01, log_path=tmp_path / "server.log")
    with pytest.raises(EmbeddedServerError, match="did not answer.*server.log"):
        server.start()
    assert server.process is None  # stopped, not leaked
    assert (tmp_path / "server.log").exists()  # a log the caller asked for is kept


def test_foreground_mode_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(Path(axdata.__file__).resolve().parents[1]))
    command = [
        sys.executable,
        "-m",
        "axdata.llm.server",
        "--port",
        str(port),
        "--n-parallel",
        "1",
        "--n-ctx",
        "1024",
        "--threads",
        "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = process.stdout.readline()  # printed once the server answers
        assert f"http://127.0.0.1:{port}/v1" in line
        assert answers(f"http://127.0.0.1:{port}/v1")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_open_llm_starts_and_stops_the_embedded_server(tmp_path) -> None:
    config = LLMConfig(embedded_n_parallel=1, embedded_n_ctx=1024, embedded_threads=1)
    with open_llm(
        config, cache_path=tmp_path / "cache.sqlite", ledger_path=tmp_path / "ledger.jsonl"
    ) as client:
        base_url = client.base_url
        answer = client.complete_sync(
            ChatRequest.user("Say hi.", purpose="smoke", params=SamplingParams(temperature=0.0, max_tokens=4))
        )
        assert answer.text.strip()
    assert not answers(base_url)
    assert (tmp_path / "ledger.jsonl").read_text().count("\n") == 1
