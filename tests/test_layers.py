"""The layers: moe_core (engine) → store (settings, db, models, runs, migrate, queue) →
api and worker side by side, which never import each other; local_deployment (what starts
the service on this machine for the tests and benchmarks) beside them, starting the API and
workers as processes, never importing them, and imported by nothing of the service. Checked
on the source (every import statement, lazy ones too) and on what a process really loads."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.environment import ROOT

# package -> the project packages it must never import
FORBIDDEN = {
    "moe_core": {"api", "worker", "store", "benchmarks", "local_deployment"},
    "store": {"api", "worker", "benchmarks", "local_deployment"},
    "api": {"worker", "benchmarks", "local_deployment"},
    "worker": {"api", "benchmarks", "local_deployment"},
    "local_deployment": {"api", "worker", "benchmarks", "moe_core"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_layer_imports_sideways_or_up(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {path: bad for path, bad in offenders.items() if bad} == {}


@pytest.mark.parametrize(
    ("entry", "absent"),
    [
        ("api.main", ("worker", "torch")),
        ("worker.tasks", ("api",)),
        ("store.queue", ("api", "worker", "torch")),
        ("migrations_env", ("api", "worker", "torch")),
        ("local_deployment.processes, local_deployment.databases", ("api", "worker", "torch")),
    ],
)
def test_what_each_process_loads(entry, absent):
    if entry == "migrations_env":  # what `alembic upgrade head` imports besides alembic
        entry = "store.models, store.db, store.settings, store.migrate"
    code = (
        f"import sys, {entry}; "
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & {set(absent)!r}); "
        "print(loaded)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_api_names_the_engine_modules_it_loads():
    # api/main.py's opening docstring says which moe_core modules the API process loads
    code = "import json, sys, api.main; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    loaded = {m.split(".")[1] for m in json.loads(result.stdout) if m.startswith("moe_core.")}
    docstring = ast.get_docstring(ast.parse((ROOT / "api" / "main.py").read_text())) or ""
    named = {
        name
        for name in re.findall(r"`(?:moe_core\.)?(\w+)`", docstring)
        if (ROOT / "moe_core" / f"{name}.py").exists()
    }
    assert named == loaded


# A router is a room with one job, read in one sitting: the experiments' CRUD and a run's
# file downloads grew into one 543-line module before they were split (api.routes.run_files).
ROUTER_MAX_LINES = 450


def test_each_router_is_readable_in_one_sitting():
    sizes = {path.name: len(path.read_text().splitlines())
             for path in (ROOT / "api" / "routes").glob("*.py")}  # fmt: skip
    assert {name: n for name, n in sizes.items() if n > ROUTER_MAX_LINES} == {}


# Every module of the engine and the service reads in one sitting (issue 25: the Trainer
# had grown back to 555 lines, benchmarks/service.py to 808); the Trainer, the engine's
# centre, tighter still.
MODULE_MAX_LINES = 500
TRAINER_MAX_LINES = 450


def test_each_module_is_readable_in_one_sitting():
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for package in ("moe_core", "store", "api", "worker", "benchmarks")
        for path in (ROOT / package).rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MODULE_MAX_LINES} == {}
    assert sizes["moe_core/trainer.py"] <= TRAINER_MAX_LINES
