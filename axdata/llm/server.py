"""The embedded OpenAI-compatible LLM server: xllamacpp serving an embedded GGUF on 127.0.0.1.

`embedded_llm_server(...)` runs it in a child process (`python -m axdata.llm.server`), so the
llama.cpp threads, memory and logs stay out of the caller, and stopping it is a signal away.
`serve_forever(...)` (the CLI `axbench llm serve`) runs it in the foreground until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import axdata
from axdata.embedded import DEFAULT_EMBEDDED_MODEL, EMBEDDED_MODELS, EmbeddedModel, get_embedded_model
from axdata.llm.types import EmbeddedServerError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
_STOP_GRACE_S = 10.0
_LOG_TAIL_CHARS = 3000


def free_port() -> int:
    """A port the OS reports free right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _resolve_model(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        raise EmbeddedServerError(
            f"Unknown embedded model {name!r}: the embedded server serves only {', '.join(EMBEDDED_MODELS)}. "
            "Pick one of those, or set llm.endpoint to the base URL of a server that has your model."
        )
    return get_embedded_model(name)


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError as err:
            raise EmbeddedServerError(
                f"Port {port} on {HOST} is busy ({err.strerror}); choose another llm.embedded_port or leave "
                "it unset to use a free port."
            ) from None


def _answers(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _cpu_count() -> int:
    """The cores this process may use: its CPU affinity, capped by OMP_NUM_THREADS where set (the thread budget
    torch also follows, e.g. one of several processes sharing a machine)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    budget = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(budget)) if budget.isdigit() and int(budget) > 0 else cores


def _start_xllamacpp(
    model: EmbeddedModel, port: int, n_parallel: int, n_ctx: int, threads: int | None
) -> Any:
    """Start serving in this process's background threads; returns when the model is loaded."""
    try:
        import xllamacpp
    except ImportError as err:
        raise EmbeddedServerError(
            "The embedded LLM server needs the package 'xllamacpp'; install it with: "
            "pip install 'axbench[local]'"
        ) from err
    params = xllamacpp.CommonParams()
    params.model.path = str(model.gguf_path())
    params.n_ctx = n_ctx
    params.n_parallel = n_parallel
    params.cpuparams.n_threads = threads or _cpu_count()
    params.model_alias = {model.name}  # a set: a plain string would become one alias per character
    params.use_jinja = True
    if model.chat_template:
        params.chat_template = model.chat_template
    params.hostnames = [HOST]
    params.port = port
    return xllamacpp.Server(params)


# ---- child-process mode -------------------------------------------------------------------------------


class EmbeddedLLMServer:
    """The embedded server in a child process; a context manager that stops it on exit, also on error.

    `base_url` ("http://127.0.0.1:PORT/v1") and `model` (the served alias = the embedded model name)
    are what an OpenAI client needs.
    """

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDED_MODEL,
        *,
        port: int | None = None,
        n_parallel: int = 4,
        n_ctx: int = 8192,
        threads: int | None = None,
        startup_timeout_s: float = 120.0,
        log_path: str | Path | None = None,
    ):
        self.model = model
        self.port = port
        self.n_parallel, self.n_ctx, self.threads = n_parallel, n_ctx, threads
        self.startup_timeout_s = startup_timeout_s
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path is not None else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise EmbeddedServerError(
                "The embedded server has not been started; use it as a context manager."
            )
        return f"http://{HOST}:{self.port}/v1"

    def start(self) -> EmbeddedLLMServer:
        embedded = _resolve_model(self.model)
        embedded.gguf_path()  # fail here, with the install command, rather than in the child's log
        if self.port is None:
            self.port = free_port()
        else:
            _check_port_free(self.port)
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix=f"axdata-llm-server-{self.port}-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "axdata.llm.server",
            "--model",
            self.model,
            "--port",
            str(self.port),
            "--n-parallel",
            str(self.n_parallel),
            "--n-ctx",
            str(self.n_ctx),
            "--exit-with-parent",
        ]
        if self.threads is not None:
            command += ["--threads", str(self.threads)]
        env = dict(os.environ)
        # The child must import this very axdata, also when it is not installed in the interpreter.
        src = str(Path(axdata.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        logger.info(
            "Starting the embedded LLM server (%s) on port %d; log: %s", self.model, self.port, self.log_path
        )
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        logger.info("Embedded LLM server ready at %s", self.base_url)
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise EmbeddedServerError(
                    f"The embedded LLM server ({self.model}, port {self.port}) exited with code {code} while "
                    f"starting. Its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            if _answers(self.base_url):
                return
            time.sleep(0.2)
        raise EmbeddedServerError(
            f"The embedded LLM server ({self.model}, port {self.port}) did not answer "
            f"GET {self.base_url}/models "
            f"within {self.startup_timeout_s:.0f} s; raise startup_timeout_s if the machine is slow. Its log "
            f"({self.log_path}) ends with:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        data = self.log_path.read_bytes()[-chars:]
        return data.decode("utf-8", errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "The embedded LLM server (pid %d) ignored SIGTERM for %.0f s; killing it.",
                    process.pid,
                    _STOP_GRACE_S,
                )
                process.kill()
                process.wait()
        if self._own_log and self.log_path is not None and process is not None and process.returncode == 0:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedLLMServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# `with embedded_llm_server() as server:` → `server.base_url`, `server.model`; stopped on exit.
embedded_llm_server = EmbeddedLLMServer


def serve_forever(
    model: str = DEFAULT_EMBEDDED_MODEL,
    port: int | None = None,
    *,
    n_parallel: int = 4,
    n_ctx: int = 8192,
    threads: int | None = None,
    startup_timeout_s: float = 120.0,
    exit_with_parent: bool = False,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve in this process until Ctrl-C or SIGTERM, then stop cleanly.

    `announce` receives the base URL once the server answers. With `exit_with_parent`, the server also
    stops when the parent process goes away, so a killed caller leaves no orphan behind.
    """
    embedded = _resolve_model(model)
    if port is None:
        port = free_port()
    else:
        _check_port_free(port)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    parent = os.getppid()
    server = None
    try:
        server = _start_xllamacpp(embedded, port, n_parallel, n_ctx, threads)
        base_url = f"http://{HOST}:{port}/v1"
        deadline = time.monotonic() + startup_timeout_s
        while not _answers(base_url):
            if stop.is_set():
                return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"The embedded LLM server did not answer at {base_url} within {startup_timeout_s:.0f} s."
                )
            time.sleep(0.2)
        announce(base_url)
        while not stop.wait(0.5):
            if exit_with_parent and os.getppid() != parent:
                logger.warning("Parent process %d is gone; stopping the embedded LLM server.", parent)
                break
    finally:
        # Dropping the last reference runs xllamacpp's destructor, which stops its HTTP loop.
        del server
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m axdata.llm.server",
        description="Serve an embedded GGUF model over an OpenAI-compatible API.",
    )
    parser.add_argument(
        "--model", default=DEFAULT_EMBEDDED_MODEL, help=f"one of {', '.join(EMBEDDED_MODELS)}"
    )
    parser.add_argument("--port", type=int, default=None, help="TCP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--n-parallel", type=int, default=4, help="requests decoded in parallel")
    parser.add_argument("--n-ctx", type=int, default=8192, help="total context, shared by the parallel slots")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the server")
    parser.add_argument("--exit-with-parent", action="store_true", help="stop when the parent process exits")
    args = parser.parse_args(argv)
    try:
        serve_forever(
            args.model,
            args.port,
            n_parallel=args.n_parallel,
            n_ctx=args.n_ctx,
            threads=args.threads,
            startup_timeout_s=args.startup_timeout,
            exit_with_parent=args.exit_with_parent,
            announce=lambda url: print(f"Serving {args.model} at {url}", flush=True),
        )
    except EmbeddedServerError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
