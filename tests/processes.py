"""The service's own processes, as deployed: a Celery worker and the API server, each in a
session of its own with a log file, started on a deployment's settings (tests/fixtures/
processes.py hands them to tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx

from store.settings import Settings
from tests.environment import ROOT
from tests.servers import free_port, stop_session


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a process these settings (and no other MOE_ variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_")}
    env.update(settings.as_env())
    env["PYTHONUNBUFFERED"] = "1"
    # Two cores: one torch thread per worker keeps the test machine responsive.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class ServiceProcess:
    """A process of the service, started in a session of its own (so that it can be killed
    with its children, as when a machine or container dies), its output in `log_path`."""

    what = "the process"  # in messages: "<what> did not start"
    start_timeout = 30.0  # seconds

    def __init__(
        self, command: list[str], settings: Settings, log_path: Path, env: dict[str, str]
    ) -> None:
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env={**settings_env(settings), **env}, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def is_ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self, timeout: float | None = None) -> Self:
        """Wait until it serves; if it exits or the time is up first, fail with its log."""
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while time.monotonic() < deadline:
            if self.is_ready():
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.what} did not start:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        raise NotImplementedError


class WorkerProcess(ServiceProcess):
    """A real `celery -A worker.celery_app worker`."""

    what = "worker"
    start_timeout = 60.0  # importing torch and Celery on a loaded machine

    def __init__(
        self, settings: Settings, log_path: Path, name: str, env: dict[str, str] | None = None
    ) -> None:
        # No --concurrency: the pool's size is the settings' runs_per_gpu, as deployed.
        command = [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "-Q", "gpu", "--prefetch-multiplier", "1",
            "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle",
            "--loglevel", "INFO",
        ]  # fmt: skip
        super().__init__(command, settings, log_path, env or {})

    def is_ready(self) -> bool:
        return " ready." in self.output()

    @property
    def pool_pids(self) -> list[int]:
        """The pool processes (children) of the worker's main process. A child is listed
        under the thread that forked it: Celery replaces a dead pool process from its pool
        supervisor's thread, so every thread's children are read, not the main one's."""
        children: set[int] = set()
        for task in Path(f"/proc/{self.process.pid}/task").glob("*"):
            try:
                children.update(int(p) for p in (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended meanwhile
        return sorted(children)

    def terminate(self) -> None:
        """SIGTERM to the main process only, as Docker and Kubernetes send it to PID 1."""
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool child): no chance to ack."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """At teardown: a run still going is abandoned, as at a SIGKILL."""
        self.kill()
        self.log.close()


class ApiProcess(ServiceProcess):
    """A real API server on a free port of 127.0.0.1: `python -m uvicorn api.main:app`, or
    with `entry="api.serve"` the deployed command (uvicorn's, with its socket fixed)."""

    what = "the API"

    def __init__(
        self, settings: Settings, log_path: Path, *, workers: int = 1, entry: str = "uvicorn"
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", entry, "api.main:app", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(workers), "--no-access-log"]  # fmt: skip
        super().__init__(command, settings, log_path, {})

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        stop_session(self.process)
        self.log.close()


class StartedProcesses:
    """What one fixture started, logs in `directory`: on leaving, every process is stopped
    and the last ones' log tails go to stderr, which pytest shows when a test fails."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[ServiceProcess] = []

    def worker(
        self,
        settings: Settings,
        name: str | None = None,
        *,
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """A worker named `name` (w0, w1, ... by default), ready unless `wait` is False."""
        name = name or f"w{sum(isinstance(p, WorkerProcess) for p in self.started)}"
        worker = WorkerProcess(settings, self.directory / f"{name}.log", name, env)
        self.started.append(worker)
        return worker.wait_ready() if wait else worker

    def api(self, settings: Settings, *, workers: int = 1, entry: str = "uvicorn") -> ApiProcess:
        """An API server answering on its `url` (see ApiProcess)."""
        count = sum(isinstance(p, ApiProcess) for p in self.started)
        server = ApiProcess(
            settings, self.directory / f"api{count}.log", workers=workers, entry=entry
        )
        self.started.append(server)
        return server.wait_ready()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self.started:
            process.stop()
        for process in self.started[-6:]:
            sys.stderr.write(f"--- {process.log_path.name} (tail)\n{process.output()[-3000:]}\n")
