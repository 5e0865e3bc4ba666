"""docker-compose.yml and the Dockerfile, checked without a Docker engine: every command,
module, file and setting they name exists, and the deployment has the shape it promises."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from store.queue import TRAINING_QUEUE
from store.settings import Settings
from tests.environment import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
STAGES = {name for _image, name in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", DOCKERFILE, re.M)}


def stage_body(name: str) -> str:
    """The Dockerfile's lines from `FROM ... AS name` to the next FROM."""
    match = re.search(rf"^FROM\s+\S+\s+AS\s+{name}\s*$(.*?)(?=^FROM\s|\Z)", DOCKERFILE, re.M | re.S)
    assert match, f"no stage {name}"
    return match.group(1)


def test_compose_has_the_services_of_the_deployment():
    assert set(SERVICES) == {"postgres", "redis", "migrate", "api", "worker"}
    assert "healthcheck" in SERVICES["postgres"] and "healthcheck" in SERVICES["redis"]
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for service in ("api", "worker"):
        depends = SERVICES[service]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"


def test_every_build_target_is_a_dockerfile_stage():
    for name, service in SERVICES.items():
        if "build" in service:
            assert service["build"]["target"] in STAGES, name
            assert (ROOT / service["build"].get("context", ".")).is_dir()


def test_every_command_runs_an_installed_program_on_existing_code():
    commands = {
        name: service["command"] for name, service in SERVICES.items() if "command" in service
    }
    for name, command in commands.items():
        if name in ("redis",):
            continue  # the image's own program
        program = command[0]
        assert shutil.which(program) or (Path(sys.executable).parent / program).exists(), program

    assert commands["migrate"] == ["alembic", "upgrade", "head"]
    assert (ROOT / "alembic.ini").is_file() and (ROOT / "migrations" / "env.py").is_file()

    assert commands["api"][:3] == ["python", "-m", "api.serve"]  # uvicorn, socket fixed
    module, attribute = commands["api"][3].split(":")
    assert getattr(importlib.import_module(module), attribute).title  # a FastAPI app
    assert "CMD " + str(commands["api"]).replace("'", '"') in stage_body("api")  # the image's

    launcher, worker = commands["worker"][:4], commands["worker"][4:]
    assert launcher == ["python", "-m", "worker.gpu_slot", "--"]
    assert importlib.util.find_spec("worker.gpu_slot") is not None
    assert worker[:4] == ["celery", "-A", "worker.celery_app", "worker"]
    assert hasattr(importlib.import_module("worker.celery_app"), "app")
    assert worker[worker.index("-Q") + 1] == TRAINING_QUEUE
    assert "--concurrency" not in worker  # the pool's size is MOE_RUNS_PER_GPU
    assert SERVICES["worker"]["environment"]["MOE_RUNS_PER_GPU"] == "${MOE_RUNS_PER_GPU:-1}"
    assert worker[worker.index("--prefetch-multiplier") + 1] == "1"
    assert "CMD " + str(worker).replace("'", '"') in stage_body("worker")  # the image's own


def test_every_setting_named_is_a_setting():
    fields = {f"MOE_{name.upper()}" for name in Settings.model_fields}
    for name, service in SERVICES.items():
        environment = service.get("environment") or {}
        for variable in environment:
            if variable.startswith("MOE_"):
                assert variable in fields, f"{name}: {variable}"


def interpolate(value: str, host: dict[str, str]) -> str:
    """Compose's `${VAR:-default}` (nested defaults too) with `host` as the shell's variables:
    the forms this file uses, and a failure on any other."""
    while match := re.search(r"\$\{(\w+):-([^${}]*)\}", value):
        name, default = match.groups()
        value = value[: match.start()] + (host.get(name) or default) + value[match.end() :]
    assert "$" not in value, f"a form this helper does not know: {value}"
    return value


@pytest.mark.parametrize(
    ("host", "per_worker", "per_run"),
    [({}, "1", "1"), ({"MOE_GPUS_PER_WORKER": "4"}, "4", "4"),
     ({"MOE_GPUS_PER_WORKER": "4", "MOE_MAX_GPUS_PER_RUN": "2"}, "4", "2")],
    ids=["default", "four-per-worker", "runs-capped-lower"],
)  # fmt: skip
def test_the_gpus_per_worker_reach_the_worker_and_the_apis_limit(host, per_worker, per_run):
    """One variable on the host: each worker claims that many GPUs (worker.gpu_slot reads
    MOE_GPUS_PER_WORKER) and the API refuses runs larger than a worker."""
    worker, api = SERVICES["worker"]["environment"], SERVICES["api"]["environment"]
    assert interpolate(worker["MOE_GPUS_PER_WORKER"], host) == per_worker
    assert interpolate(api["MOE_MAX_GPUS_PER_RUN"], host) == per_run
    assert interpolate(worker["MOE_MAX_GPUS_PER_RUN"], host) == per_run
    settings = Settings(gpus_per_worker=interpolate(worker["MOE_GPUS_PER_WORKER"], host),
                        max_gpus_per_run=interpolate(api["MOE_MAX_GPUS_PER_RUN"], host))  # fmt: skip
    assert settings.max_gpus_per_run <= settings.gpus_per_worker == int(per_worker)


def test_workers_scale_and_each_claims_a_gpu_of_its_own():
    worker = SERVICES["worker"]
    # `--scale worker=N` needs replicas without a fixed name or host port
    assert "container_name" not in worker and "ports" not in worker
    # every replica sees every GPU (a reservation's count is not exclusive between
    # replicas); worker.gpu_slot gives each MOE_GPUS_PER_WORKER of its own, through locks on
    # a volume they share (tests/worker/test_gpu_slot.py shows it)
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == "all"
    assert worker["command"][:3] == ["python", "-m", "worker.gpu_slot"]
    volumes = dict(volume.split(":")[:2] for volume in worker["volumes"])
    assert volumes["gpu-locks"] == worker["environment"]["MOE_GPU_LOCK_DIR"]
    assert "gpu-locks" in COMPOSE["volumes"]
    assert Settings(home=Path("/var/lib/moe-lab")).artifact_dir.as_posix() in volumes.values()
    grace = int(worker["stop_grace_period"].removesuffix("s"))
    assert grace >= 30  # the handback on SIGTERM takes seconds


def copies(stage: str) -> list[tuple[str, str]]:
    """(source, destination) of each path the stage's COPY lines take from the context."""
    pairs = []
    for line in re.findall(r"^COPY\s+(.+)$", stage_body(stage), re.MULTILINE):
        *sources, destination = [word for word in line.split() if not word.startswith("--")]
        pairs += [(source, destination) for source in sources]
    return pairs


def test_dockerfile_copies_only_existing_paths():
    for stage in STAGES:
        for source, _destination in copies(stage):
            assert (ROOT / source).exists(), (stage, source)


@pytest.mark.parametrize(("stage", "other"), [("api", "worker"), ("worker", "api")])
def test_neither_image_copies_the_others_code(stage, other):
    for source, destination in copies(stage):
        for path in (source, destination):
            assert path.rstrip("/") != other and not path.startswith(f"{other}/"), (stage, path)


def test_the_api_image_has_no_torch():
    api = stage_body("api")
    installed = re.findall(r"pip install --require-hashes -r (\S+)", api)
    assert installed == ["requirements/api.lock"]
    requirements = (ROOT / "requirements/api.txt").read_text()
    assert not re.search(r"^(torch|numpy|datasets|tokenizers)\b", requirements, re.M)
    # nor does anything they depend on pull torch in
    assert not re.search(r"^torch==", (ROOT / "requirements/api.lock").read_text(), re.M)
    copied = " ".join(re.findall(r"^COPY\s+(.+)$", api, re.MULTILINE))
    for module in re.findall(r"moe_core/(\w+)\.py", copied):
        source = (ROOT / "moe_core" / f"{module}.py").read_text()
        assert not re.search(
            r"^\s*(import|from) (torch|numpy|datasets|tokenizers)", source, re.M
        ), module
    worker = re.findall(r"pip install --require-hashes -r (\S+)", stage_body("worker"))
    assert worker == ["requirements/worker.lock"]


@pytest.mark.parametrize("path", [".venv", "runs", ".git"])
def test_dockerignore_keeps_local_state_out(path):
    assert path in (ROOT / ".dockerignore").read_text().split()


def stage_files(stage: str, into: Path) -> Path:
    """Copy what the stage's COPY lines copy (from the build context) into `into`."""
    for source, destination in copies(stage):
        path = ROOT / source
        # "COPY a b/" puts a inside b; "COPY a b" makes b
        target = into / destination / path.name if destination.endswith("/") else into / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"),
                            dirs_exist_ok=True)  # fmt: skip
        else:
            shutil.copy(path, target)
    return into


# Run from a folder that holds only what a stage copies: import every module of the
# project's packages there (lazy imports too, e.g. worker.agent at worker_ready), check that
# each came from that folder and that nothing of `absent` was loaded, then migrate a fresh
# SQLite database with the stage's alembic.ini and migrations/ to the models' tables.
CLOSURE = """
import importlib, subprocess, sys
from pathlib import Path
app, packages, absent = Path(sys.argv[1]), sys.argv[2].split(","), set(sys.argv[3].split(","))
sys.path[0] = str(app)
for package in packages:
    for path in sorted((app / package).rglob("*.py")):
        if path.stem != "__main__":
            module = ".".join(path.relative_to(app).with_suffix("").parts)
            importlib.import_module(module.removesuffix(".__init__"))
loaded = {name.split(".")[0] for name in sys.modules}
assert not loaded & absent, f"loaded {loaded & absent}"
for name, module in list(sys.modules.items()):
    if name.split(".")[0] in packages:
        assert Path(module.__file__).is_relative_to(app), (name, module.__file__)
if "alembic" in sys.argv[4:]:
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=app, check=True)
else:
    from store.migrate import upgrade_database
    upgrade_database(f"sqlite:///{app / 'fresh.db'}")
import sqlite3
from store.models import Base
with sqlite3.connect(app / "fresh.db") as db:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
assert set(Base.metadata.tables) <= tables, f"not migrated: {set(Base.metadata.tables) - tables}"
"""


@pytest.mark.parametrize(
    ("stage", "packages", "absent", "migrate"),
    [
        # the API, and the migrate job that runs `alembic upgrade head` on the API image
        ("api", ["api", "store", "moe_core"], {"worker", "torch"}, "alembic"),
        # the worker, which upgrades an embedded SQLite store at start (store.migrate)
        ("worker", ["worker", "store", "moe_core"], {"api"}, "store.migrate"),
    ],
)
def test_each_image_holds_what_its_processes_import_and_not_the_other(
    stage, packages, absent, migrate, tmp_path
):
    """A file a stage forgets to copy fails here as it would in the image."""
    app = stage_files(stage, tmp_path / "app")
    assert not any((app / name).exists() for name in absent if name != "torch")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_") and k != "PYTHONPATH"}
    env["MOE_HOME"] = str(tmp_path / "home")
    env["MOE_DATABASE_URL"] = f"sqlite:///{app / 'fresh.db'}"  # for the alembic command
    command = [sys.executable, "-c", CLOSURE, str(app), ",".join(packages),
               ",".join(sorted(absent)), migrate]  # fmt: skip
    result = subprocess.run(command, cwd=app, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_worker_image_lets_torch_reach_the_gpu():
    """Without `compute` the NVIDIA runtime mounts no libcuda into the image, and without
    `utility` no nvidia-smi, which worker.gpu_slot counts the GPUs with."""
    (capabilities,) = re.findall(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", stage_body("worker"))
    assert {"compute", "utility"} <= set(capabilities.split(","))
