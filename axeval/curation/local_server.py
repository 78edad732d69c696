"""A real Argilla server on 127.0.0.1 for tests and local review: argilla-server + osmem-server + redis.

argilla-server 2.8 needs a SQL database (SQLite here), Redis and an Elasticsearch/OpenSearch endpoint;
`osmem-server` (PyPI) is an in-memory OpenSearch-compatible engine that is enough for datasets, records,
suggestions, bulk responses, search and export. The server lives in its **own** virtual environment
(`.argilla-venv` by default): it needs `click<8.2`, which conflicts with huggingface_hub in the axbench
environment. `ensure_server_venv()` creates it once and reuses it.

    with LocalArgilla(home="/tmp/argilla-home") as server:
        print(server.api_url, server.owner.api_key)

Known limit of the in-memory engine: an annotator's single-response submit from the web UI returns 500
(the response is still saved in SQL; `python -m argilla_server search-engine reindex` repairs the
index). Bulk `records.log` with submitted responses works, which is what the tests use.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from axdata.errors import AxbenchError

SERVER_REQUIREMENTS = ("argilla-server==2.8.0", "click<8.2", "osmem-server")
DEFAULT_VENV = Path(".argilla-venv")
DEFAULT_WORKSPACE = "argilla"
STAMP = ".axbench-argilla-installed"


class LocalArgillaError(AxbenchError, RuntimeError):
    """The local server could not be installed or started; the message carries the log tail."""


@dataclass(frozen=True)
class ArgillaUser:
    username: str
    password: str
    api_key: str
    role: str


@dataclass
class LocalArgilla:
    """Start redis, osmem-server and argilla-server on free ports; users are created before the start."""

    home: Path | None = None
    venv: Path = DEFAULT_VENV
    port: int | None = None
    workspace: str = DEFAULT_WORKSPACE
    annotators: tuple[str, ...] = ("annotator1", "annotator2")
    owner_password: str = "owner-password-1"
    start_timeout_s: float = 120.0
    owner: ArgillaUser = field(init=False)
    users: list[ArgillaUser] = field(init=False, default_factory=list)
    api_url: str = field(init=False, default="")
    start_seconds: float = field(init=False, default=0.0)
    _processes: list[tuple[str, subprocess.Popen]] = field(init=False, default_factory=list)
    _own_home: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.venv = Path(self.venv).absolute()
        self.owner = ArgillaUser("owner", self.owner_password, f"owner.apikey.{os.urandom(6).hex()}", "owner")
        self.users = [self.owner] + [
            ArgillaUser(name, f"{name}-password-1", f"{name}.apikey.{os.urandom(6).hex()}", "annotator")
            for name in self.annotators]

    # -- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> LocalArgilla:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        began = time.monotonic()
        python = server_python(self.venv)
        if shutil.which("redis-server") is None:
            raise LocalArgillaError("redis-server is not on PATH; install it (Debian: apt-get install -y "
                                    "redis-server) and start again.")
        if self.home is None:
            self.home = Path(tempfile.mkdtemp(prefix="axbench-argilla-"))
            self._own_home = True
        self.home = Path(self.home).absolute()
        self.home.mkdir(parents=True, exist_ok=True)
        redis_port, search_port = free_port(), free_port()
        self.port = self.port or free_port()
        self.api_url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ,
               "ARGILLA_HOME_PATH": str(self.home),
               "ARGILLA_DATABASE_URL": f"sqlite+aiosqlite:///{self.home}/argilla.db?check_same_thread=False",
               "ARGILLA_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
               "ARGILLA_SEARCH_ENGINE": "opensearch",
               "ARGILLA_ELASTICSEARCH": f"http://127.0.0.1:{search_port}",
               "HF_HUB_DISABLE_TELEMETRY": "1"}
        for key in ("ARGILLA_API_KEY", "ARGILLA_API_URL"):  # the server's own settings must not see a client's
            env.pop(key, None)
        try:
            self._spawn("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                                  "--appendonly", "no"], env)
            osmem = subprocess.run([str(python), "-c", "import osmem_server, os; print(os.path.dirname("
                                    "osmem_server.__file__))"], capture_output=True, text=True, check=True)
            binary = Path(osmem.stdout.strip()) / "bin" / "osmem-server"
            self._spawn("osmem", [str(binary), "-addr", f"127.0.0.1:{search_port}", "-no-stdin-watch"], env)
            _wait(lambda: _port_open(redis_port), 20, "redis", self)
            _wait(lambda: _http_ok(f"http://127.0.0.1:{search_port}/"), 30, "osmem-server", self)
            self._cli(python, env, ["database", "migrate"])
            for user in self.users:
                self._cli(python, env, ["database", "users", "create", "--first-name", user.username.capitalize(),
                                        "--username", user.username, "--role", user.role, "--password",
                                        user.password, "--api-key", user.api_key, "--workspace", self.workspace])
            self._spawn("argilla-server", [str(python), "-m", "argilla_server", "start", "--host", "127.0.0.1",
                                           "--port", str(self.port)], env)
            _wait(lambda: _http_ok(f"{self.api_url}/api/v1/me", {"X-Argilla-Api-Key": self.owner.api_key}),
                  self.start_timeout_s, "argilla-server", self)
        except BaseException:
            self.stop(keep_logs=True)
            raise
        self.start_seconds = time.monotonic() - began

    def stop(self, keep_logs: bool = False) -> None:
        for _, process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
        for _, process in reversed(self._processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self._processes.clear()
        if self._own_home and not keep_logs and self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------------
    def log_path(self, name: str) -> Path:
        assert self.home is not None
        return self.home / f"{name}.log"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of every process log, for error messages."""
        if self.home is None:
            return ""
        parts = []
        for name in ("redis", "osmem", "cli", "argilla-server"):
            path = self.log_path(name)
            if path.exists():
                tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = open(self.log_path(name), "ab")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=self.home, start_new_session=True)
        log.close()
        self._processes.append((name, process))

    def _cli(self, python: Path, env: dict[str, str], args: list[str]) -> None:
        with open(self.log_path("cli"), "ab") as log:
            result = subprocess.run([str(python), "-m", "argilla_server", *args], stdout=log,
                                    stderr=subprocess.STDOUT, env=env, cwd=self.home, timeout=120, check=False)
        if result.returncode != 0:
            shown = [a if a not in {u.password for u in self.users} | {u.api_key for u in self.users} else "***"
                     for a in args]
            raise LocalArgillaError(f"`argilla_server {' '.join(shown)}` exited with {result.returncode}.\n"
                                    f"{self.log_tail()}")


def server_python(venv: Path = DEFAULT_VENV) -> Path:
    """The Python of an installed server venv; an error with the install command otherwise."""
    python = Path(venv) / "bin" / "python"
    if not (Path(venv) / STAMP).exists() or not python.exists():
        raise LocalArgillaError(
            f"{venv} holds no argilla-server installation; create it once with "
            f"`python -m axeval.curation.local_server --install` (or make argilla), which runs "
            f"`python3 -m venv {venv} && {venv}/bin/pip install {' '.join(repr(r) for r in SERVER_REQUIREMENTS)}`.")
    return python


def ensure_server_venv(venv: Path = DEFAULT_VENV, base_python: str | None = None) -> float:
    """Create the server venv unless it is installed already; returns the seconds it took (0 when reused)."""
    venv = Path(venv)
    if (venv / STAMP).exists():
        return 0.0
    began = time.monotonic()
    python = base_python or shutil.which("python3") or sys.executable
    steps = [[python, "-m", "venv", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              *SERVER_REQUIREMENTS]]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LocalArgillaError(f"`{' '.join(step)}` failed with exit code {result.returncode}:\n"
                                    f"{(result.stdout + result.stderr)[-4000:]}")
    (venv / STAMP).write_text(" ".join(SERVER_REQUIREMENTS) + "\n")
    return time.monotonic() - began


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(ready, timeout_s: float, what: str, server: LocalArgilla) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        dead = [name for name, process in server._processes if process.poll() is not None]
        if dead:
            raise LocalArgillaError(f"{', '.join(dead)} exited while waiting for {what}.\n{server.log_tail()}")
        time.sleep(0.3)
    raise LocalArgillaError(f"{what} was not ready after {timeout_s:.0f} s.\n{server.log_tail()}")


def main(argv: list[str] | None = None) -> int:
    """`python -m axeval.curation.local_server [--install] [--port P] [--home DIR]`: serve until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--install", action="store_true", help="create the server venv first if missing")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--port", type=int, default=6900)
    parser.add_argument("--home", type=Path, default=Path(".argilla-home"))
    args = parser.parse_args(argv)
    if args.install:
        seconds = ensure_server_venv(args.venv)
        print(f"server venv {args.venv}: " + (f"installed in {seconds:.0f} s" if seconds else "already installed"))
    import signal

    def _interrupt(*_: object) -> None:  # `kill`/`timeout` send SIGTERM: stop the children too, as on Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    server = LocalArgilla(home=args.home, venv=args.venv, port=args.port)
    server.start()
    print(f"Argilla is up at {server.api_url} (started in {server.start_seconds:.1f} s); data in {server.home}")
    for user in server.users:  # a throw-away local server: these are its fresh credentials, shown to its user
        print(f"  {user.role:9s} {user.username:12s} password {user.password}  api key {user.api_key}")
    print(f"export ARGILLA_API_URL={server.api_url}  # and ARGILLA_API_KEY=<the owner's key above>")
    try:
        while all(process.poll() is None for _, process in server._processes):
            time.sleep(1)
        print("a server process exited:\n" + server.log_tail(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
