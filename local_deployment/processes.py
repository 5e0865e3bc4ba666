"""The service's own processes, as deployed: a Celery worker and the API server, each in a
session of its own with a log file, started on a deployment's settings."""

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

from .servers import free_port, stop_session

ROOT = Path(__file__).resolve().parent.parent  # where `python -m api.serve` finds the app


def settings_env(settings: Settings, *, threads: int | None = 1) -> dict[str, str]:
    """The environment that gives a process these settings (and no other MOE_ variable).

    `threads`: OMP_NUM_THREADS unless the environment sets it (the API, the workers and
    whoever drives them share a few cores: one torch thread each keeps the machine
    responsive); None leaves torch its own default (a worker on a GPU)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_")}
    env.update(settings.as_env())
    env["PYTHONUNBUFFERED"] = "1"
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


class ServiceProcess:
    """A process of the service, started in a session of its own (so that it can be killed
    with its children, as when a machine or container dies), its output appended to
    `log_path`."""

    what = "the process"  # in messages: "<what> did not start"
    start_timeout = 30.0  # seconds

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "ab")
        # What an earlier process wrote to the same log is not this one's (a restarted
        # worker of the same name would otherwise look ready at once).
        self._log_start = self.log.tell()
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

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
        raise RuntimeError(f"{self.what} did not start:\n{self.output()[-3000:]}")

    def output(self) -> str:
        """What this process has written to its log so far."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def stop(self) -> None:
        raise NotImplementedError


class WorkerProcess(ServiceProcess):
    """A real `celery -A worker.celery_app worker` named `name`; its pool has the
    settings' runs_per_gpu processes, as deployed. `threads`: see settings_env."""

    what = "worker"
    start_timeout = 90.0  # importing torch and Celery on a loaded machine

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        name: str,
        env: dict[str, str] | None = None,
        *,
        threads: int | None = 1,
    ) -> None:
        self.name = name  # its hostname is name@<host>
        # No --concurrency: the pool's size is the settings' runs_per_gpu, as deployed.
        command = [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "-Q", "gpu", "--prefetch-multiplier", "1",
            "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle",
            "--loglevel", "INFO",
        ]  # fmt: skip
        super().__init__(command, {**settings_env(settings, threads=threads), **(env or {})},
                         log_path)  # fmt: skip

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

    def shutdown(self, timeout: float = 60) -> None:
        """A warm shutdown (SIGTERM, as at scale-in), killed if it takes over `timeout` s."""
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def stop(self) -> None:
        """At teardown: a run still going is abandoned, as at a SIGKILL."""
        self.kill()
        self.log.close()


class ApiProcess(ServiceProcess):
    """A real API server on 127.0.0.1 (`port`, default a free one): `python -m uvicorn
    api.main:app`, or with `entry="api.serve"` the deployed command (uvicorn's, with its
    socket fixed). Ready when /healthz answers and each of its `workers` has started."""

    what = "the API"
    start_timeout = 60.0

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        *,
        workers: int = 1,
        entry: str = "uvicorn",
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        command = [sys.executable, "-m", entry, "api.main:app", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(workers), "--no-access-log"]  # fmt: skip
        super().__init__(command, settings_env(settings), log_path)

    def is_ready(self) -> bool:
        try:
            if httpx.get(f"{self.url}/healthz", timeout=1).status_code != 200:
                return False
        except httpx.HTTPError:
            return False
        # The first worker to answer is not all of them: a figure or a test that spreads
        # over the workers waits for every one.
        return self.output().count("Application startup complete") >= self.workers

    def stop(self) -> None:
        stop_session(self.process)
        self.log.close()


class StartedProcesses:
    """What one test or benchmark started, logs in `directory`: on leaving, every process
    is stopped and the last ones' log tails go to stderr (pytest shows them when a test
    fails); with `tails` off, only when leaving on an error."""

    def __init__(self, directory: Path, *, tails: bool = True) -> None:
        self.directory = directory
        self.tails = tails
        self.started: list[ServiceProcess] = []

    def worker(
        self,
        settings: Settings,
        name: str | None = None,
        *,
        wait: bool = True,
        env: dict[str, str] | None = None,
        threads: int | None = 1,
    ) -> WorkerProcess:
        """A worker named `name` (w0, w1, ... by default), ready unless `wait` is False."""
        name = name or f"w{sum(isinstance(p, WorkerProcess) for p in self.started)}"
        worker = WorkerProcess(settings, self.directory / f"{name}.log", name, env,
                               threads=threads)  # fmt: skip
        self.started.append(worker)
        return worker.wait_ready() if wait else worker

    def api(
        self,
        settings: Settings,
        *,
        workers: int = 1,
        entry: str = "uvicorn",
        port: int | None = None,
    ) -> ApiProcess:
        """An API server answering on its `url` (see ApiProcess)."""
        count = sum(isinstance(p, ApiProcess) for p in self.started)
        server = ApiProcess(settings, self.directory / f"api{count}.log", workers=workers,
                            entry=entry, port=port)  # fmt: skip
        self.started.append(server)
        return server.wait_ready()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        for process in self.started:
            process.stop()
        if self.tails or exc_type is not None:
            for process in self.started[-6:]:
                sys.stderr.write(
                    f"--- {process.log_path.name} (tail)\n{process.output()[-3000:]}\n"
                )
