"""The one settings object of the service, shared by the API, the worker and migrations.

Every field reads an upper-case environment variable with the `MOE_` prefix
(`MOE_DATABASE_URL`, `MOE_BROKER_URL`, ...). With none set, the service runs embedded:
SQLite for the store and kombu's SQLAlchemy transport on a second SQLite file for the
broker, both under `MOE_HOME` (default `$XDG_DATA_HOME/moe-lab`, i.e.
`~/.local/share/moe-lab`), so that a first run needs no server.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from store.db import is_sqlite


def default_home() -> Path:
    """The data home of the embedded default, following the XDG base-directory convention."""
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "moe-lab"


# The default of a setting that _embedded_defaults fills in (from `home`): None until then,
# typed Any so that the field keeps the type it has once filled.
_FILLED_IN: Any = None


class Settings(BaseSettings):
    # validate_default off: the None defaults below are placeholders that _embedded_defaults fills.
    model_config = SettingsConfigDict(env_prefix="MOE_", extra="ignore", validate_default=False)

    home: Path = Field(
        default_factory=default_home, description="data home of the embedded default"
    )
    # The four below default to places under `home` (filled in by _embedded_defaults).
    database_url: str = Field(
        _FILLED_IN, description="SQLAlchemy URL; default sqlite:///$MOE_HOME/moe.db"
    )
    broker_url: str = Field(
        _FILLED_IN, description="Celery broker URL; default sqla+sqlite:///$MOE_HOME/broker.db"
    )
    artifact_dir: Path = Field(_FILLED_IN, description="checkpoints and model weights")
    cache_dir: Path = Field(_FILLED_IN, description="the worker's tokenizer/dataset cache")
    data_dir: Path | None = Field(
        None,
        description="directory with train.txt/valid.txt/test.txt for experiments whose base "
        "names no data_dir; unset: the hub's WikiText-2",
    )
    # The texts a run may name (BaseConfig's dataset_name/dataset_config), as "name/config":
    # the operator's list, never a hub dataset fetched on a client's word. With data_dir set
    # a worker trains on that directory's text whatever the run names.
    datasets: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["wikitext/wikitext-2-v1"],
        description="comma-separated name/config pairs a run may name (MOE_DATASETS)",
    )
    # GPUs (on a CPU worker: processes) one run may span: the largest worker's, which the
    # API checks a run against before queueing it (with workers scaled from zero, none may
    # be registered to ask).
    max_gpus_per_run: int = Field(1, ge=1, le=64)
    # This worker's GPUs (on a CPU worker: slots for processes on gloo); a run asking for k
    # of them holds k of its slots and is launched by torchrun. Unset: the devices it sees,
    # or runs_per_gpu on a CPU.
    gpus_per_worker: int | None = Field(None, ge=1, le=64)
    # When a rank of such a run dies, torchrun restarts all its ranks in place (from the
    # last checkpoint) this many times before the worker hands the run back as a restart.
    rank_restarts: int = Field(0, ge=0, le=10)
    # Per-user quotas (an admin may set a user's own, store.models.users): runs waiting in
    # the queue (a submission past it is a 429) and GPUs in use (the user's next run waits).
    # Unset: no limit.
    max_queued_runs_per_user: int | None = Field(None, ge=0)
    max_gpus_per_user: int | None = Field(None, ge=0)
    api_token: SecretStr | None = Field(
        None, description="when set, the API needs this bearer token"
    )

    # Worker
    device: str | None = Field(
        None, description="torch device of this worker (cuda:0, cpu); unset: cuda if available"
    )
    # Training runs a worker holds at once, all on its one device: its Celery pool has this
    # many processes, each with 1/N of the GPU's memory unless its run needs more. Small runs
    # (the spec's sizes) leave most of an H200 idle alone; several side by side fill it.
    runs_per_gpu: int = Field(1, ge=1, le=64)
    # A run whose GPU, shared with other runs, ran out of memory is handed back and tried
    # again later (not a crash); after this many such handbacks it fails, saying so.
    max_oom_handbacks: int = Field(5, ge=0)
    # Workers that share a host's GPUs (docker compose replicas) each claim one here (a lock
    # file per GPU, see worker.gpu_slot); a folder on a volume the replicas share.
    gpu_lock_dir: Path | None = Field(
        None, description="where workers on one host claim a GPU each; unset: no claiming"
    )
    # Prefix of every Redis key of the broker: several deployments (or test runs) can share
    # one Redis without seeing each other's queues.
    broker_key_prefix: str = ""
    # Liveness is a lease in the database: a running run's worker writes a heartbeat every
    # sixth of this; a run silent for this long is taken for dead and put back in the queue
    # by the sweep that live workers run (and its message, if Redis lost it, published
    # again after a worker sat idle this long beside it).
    heartbeat_timeout: float = Field(60.0, gt=0)
    # How often each live worker sweeps the store for runs to take over or re-publish.
    sweep_interval: float = Field(5.0, gt=0)
    # A run whose workers died more than this many times (lease expired, process killed,
    # e.g. out of memory) fails with an error that says so, instead of looping for good.
    max_restarts: int = Field(5, ge=0)
    # A study's or sweep trial's seeds of one configuration (base.seeds_together) are
    # claimed by one pool process and trained as one stack of at most this many runs.
    max_seeds_together: int = Field(8, ge=1)
    # Only a backstop: Redis hands an unacknowledged task to another worker after this many
    # seconds. Taking over a dead worker's run is the lease's job (heartbeat_timeout); a
    # redelivered task whose run is held by a live worker, or finished, does nothing.
    visibility_timeout: int = Field(6 * 3600, ge=1)
    # How often a training run reads its cancel flag: about one GPU training step, so a
    # cancel lands within a step or two.
    cancel_poll_seconds: float = Field(0.1, ge=0)
    # GET /experiments/{id}/metrics of a running run may be served from the API's cache up
    # to this many seconds old (dashboards poll it); a finished run's never changes.
    metrics_max_age: float = Field(1.0, ge=0)
    # An event stream (GET /experiments/{id}/events) looks at its run this often; one read
    # per interval per run and API process, however many streams follow it.
    event_poll_seconds: float = Field(1.0, gt=0)
    # A running run's worker writes its progress (step, tokens/s, ETA) and its new step
    # points this often.
    progress_interval: float = Field(2.0, gt=0)
    # A running run's training process reads its CPU and memory (and its GPU's utilisation,
    # memory and power) this often and keeps them as a history (worker.system_metrics); 0:
    # none. A run keeps at most system_points_max readings: past that the oldest are
    # thinned to every other one and the reading interval doubles.
    system_metrics_interval: float = Field(5.0, ge=0)
    system_points_max: int = Field(2000, ge=10)
    # A worker whose database goes away at an epoch's end waits this long for it, retrying,
    # with training paused (the epoch's checkpoint follows its rows), instead of failing.
    db_outage_seconds: float = Field(300.0, ge=0)
    # The API's request threads and its database connections, sized to each other: a
    # request that holds a thread can always get a connection, so under any load a request
    # waits for a thread (in the event loop, costing nothing) rather than timing out on the
    # pool. More requests in flight than threads simply queue.
    api_threads: int = Field(20, ge=1, le=200)
    # How long a request waits for a database connection before it is answered 503 with
    # Retry-After (only when something else holds them, e.g. a slow database).
    db_pool_timeout: float = Field(10.0, gt=0)
    # Optional sinks (worker.sinks), off by default: each run also written where researchers'
    # own tools read it. A sink that fails is logged and counted on /metrics; the run goes on.
    tensorboard: bool = Field(
        False, description="TensorBoard event files per run, in its artifacts' tensorboard/"
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="mirror each run into an MLflow run on this tracking server"
    )
    # Embedded SQLite has no separate migrate step: the API and worker upgrade it at start.
    auto_migrate: bool = Field(
        _FILLED_IN, description="`alembic upgrade head` at start; default: on for SQLite"
    )

    @field_validator(
        "data_dir", "api_token", "device", "gpu_lock_dir", "mlflow_tracking_uri", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # docker compose passes `MOE_API_TOKEN: ${MOE_API_TOKEN:-}` as "" when unset.
        return None if value == "" else value

    @field_validator("datasets", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.home / 'moe.db'}"
        if self.broker_url is None:
            self.broker_url = f"sqla+sqlite:///{self.home / 'broker.db'}"
        if self.artifact_dir is None:
            self.artifact_dir = self.home / "artifacts"
        if self.cache_dir is None:
            self.cache_dir = self.home / "cache"
        if self.auto_migrate is None:
            self.auto_migrate = is_sqlite(self.database_url)
        return self

    def as_env(self) -> dict[str, str]:
        """The MOE_ environment variables that give another process these settings."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            if isinstance(value, list):
                value = ",".join(value)
            env[f"MOE_{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
        return env


@lru_cache
def get_settings() -> Settings:
    return Settings()
