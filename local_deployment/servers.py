"""Free ports, and throwaway servers: a `redis-server` and a Postgres cluster of one's own, on
their own ports in temporary folders, that a fault test may stop and start at will, and an
`mlflow server`. The shared servers of the machine are never touched."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (the system's pick, free until bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    # (...): callers bind their loop's variables as the lambda's defaults
    predicate: Callable[..., Any],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "",
) -> Any:
    """Poll until `predicate()` is truthy and return its value; TimeoutError after
    `timeout` seconds. A server cannot tell us it is up: we look."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what or predicate}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait_port(port: int, up: bool, timeout: float = 20) -> None:
    wait_until(lambda: _listening(port) is up, timeout=timeout,
               what=f"port {port} to go {'up' if up else 'down'}")  # fmt: skip


def stop_session(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM to a process started in a session of its own and its children, SIGKILL after
    `timeout` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class RedisServer:
    """`redis-server` on its own port; `appendonly` keeps queued messages across restarts."""

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        if shutil.which("redis-server") is None:
            raise FileNotFoundError("redis-server is not installed")
        self.directory, self.appendonly = directory, appendonly
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, empty: bool = False) -> RedisServer:
        """Start; `empty` first throws its data away (a Redis that lost everything)."""
        if empty:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.directory), "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.port, up=True)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis flushes its append-only file and exits
            self.process.wait(timeout=20)
        self.process = None


def _postgres_bin(program: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    path = found[-1] if found else shutil.which(program)
    if not path:
        raise FileNotFoundError(f"Postgres' {program} is not installed")
    return path


class PostgresCluster:
    """A Postgres cluster made with `initdb` and run with `pg_ctl`, trust auth for `root`.

    Postgres refuses to run as root: as root, the cluster belongs to the `postgres` user
    and its commands run as that user."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="moe-test-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.directory, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "root", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://root@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self._as, _postgres_bin(program), *args], check=True,
                       capture_output=True, timeout=60)  # fmt: skip

    def start(self) -> PostgresCluster:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.directory / "log"), "-w", "start")  # fmt: skip
        _wait_port(self.port, up=True)
        return self

    def stop(self) -> None:
        """A fast shutdown: clients are disconnected at once, as when a database goes away."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        _wait_port(self.port, up=False)

    def destroy(self) -> None:
        try:
            self.stop()
        except Exception:
            pass
        shutil.rmtree(self.directory, ignore_errors=True)


class MlflowServer:
    """A real `mlflow server` (the full `mlflow` package, a dev requirement) on its own port,
    its SQLite backend and artifacts in `directory`; stopped with its workers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> MlflowServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = open(self.directory / "server.log", "ab")
        mlflow = Path(sys.executable).parent / "mlflow"
        self.process = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.db'}",
             "--artifacts-destination", str(self.directory / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            cwd=self.directory, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,  # uvicorn's worker goes with it at stop()
        )  # fmt: skip
        try:  # creating its schema and importing the server: ~20 s on a loaded machine
            wait_until(self._healthy, timeout=timeout, interval=0.5, what="mlflow server")
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            log = (self.directory / "server.log").read_text()[-3000:]
            raise RuntimeError(f"{exc}\n{log}") from None
        return self

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {self.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                return b" 200 " in s.recv(64)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop_session(self.process, timeout=20)
        self.process = None
        self.log.close()
