"""docker-compose.yml and the Dockerfile, checked without a Docker engine: every command,
module, file and setting they name exists, and the deployment has the shape it promises."""

from __future__ import annotations

import importlib
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from store.queue import TRAINING_QUEUE
from store.settings import Settings
from tests.conftest import ROOT

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

    module, attribute = commands["api"][1].split(":")
    assert getattr(importlib.import_module(module), attribute).title  # a FastAPI app

    worker = commands["worker"]
    assert worker[:4] == ["celery", "-A", "worker.celery_app", "worker"]
    assert hasattr(importlib.import_module("worker.celery_app"), "app")
    assert worker[worker.index("-Q") + 1] == TRAINING_QUEUE
    assert worker[worker.index("--concurrency") + 1] == "1"
    assert worker[worker.index("--prefetch-multiplier") + 1] == "1"
    assert f'"{worker[-1]}"]' in stage_body("worker")  # the image's default is the same


def test_every_setting_named_is_a_setting():
    fields = {f"MOE_{name.upper()}" for name in Settings.model_fields}
    for name, service in SERVICES.items():
        environment = service.get("environment") or {}
        for variable in environment:
            if variable.startswith("MOE_"):
                assert variable in fields, f"{name}: {variable}"


def test_workers_scale_and_reserve_a_gpu_each():
    worker = SERVICES["worker"]
    # `--scale worker=N` needs replicas without a fixed name or host port
    assert "container_name" not in worker and "ports" not in worker
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == 1
    volumes = [volume.split(":")[1] for volume in worker["volumes"]]
    assert Settings(home=Path("/var/lib/moe-lab")).artifact_dir.as_posix() in volumes


def test_dockerfile_copies_only_existing_paths():
    for line in re.findall(r"^COPY\s+(.+)$", DOCKERFILE, re.MULTILINE):
        *sources, _destination = line.split()
        for source in sources:
            if not source.startswith("--"):
                assert (ROOT / source).exists(), source


def test_the_api_image_has_no_torch():
    api = stage_body("api")
    installed = re.findall(r"pip install -r (\S+)", api)
    assert installed == ["requirements/api.txt"]
    requirements = (ROOT / "requirements/api.txt").read_text()
    assert not re.search(r"^(torch|numpy|datasets|tokenizers)\b", requirements, re.M)
    copied = " ".join(re.findall(r"^COPY\s+(.+)$", api, re.MULTILINE))
    for module in re.findall(r"moe_core/(\w+)\.py", copied):
        source = (ROOT / "moe_core" / f"{module}.py").read_text()
        assert not re.search(
            r"^\s*(import|from) (torch|numpy|datasets|tokenizers)", source, re.M
        ), module
    assert re.findall(r"pip install -r (\S+)", stage_body("worker")) == ["requirements/worker.txt"]


@pytest.mark.parametrize("path", [".venv", "runs", ".git"])
def test_dockerignore_keeps_local_state_out(path):
    assert path in (ROOT / ".dockerignore").read_text().split()
