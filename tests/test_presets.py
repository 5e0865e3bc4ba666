"""The presets' names come from one place, the engine's registry (moe_core.presets), and
every part of the project that names them agrees: the API's schema (its enums and the
descriptions that list them), GET /presets, the CLI's help and the docs' HTTP API page. (The dashboard's
filter asks GET /presets: tests/api/test_dashboard.py.)"""

from __future__ import annotations

from typer.testing import CliRunner

from api.main import create_app
from moe_core.presets import BASE_PRESETS, EXPERIMENT_PRESETS
from moe_lab.cli import app

SCHEMA = create_app().openapi()["components"]["schemas"]


def test_the_api_schema_offers_and_states_every_preset():
    create = SCHEMA["ExperimentCreate"]["properties"]
    (offered, _null) = create["preset"]["anyOf"]
    assert offered["enum"] == list(EXPERIMENT_PRESETS)
    assert create["base_preset"]["enum"] == list(BASE_PRESETS)
    study = SCHEMA["StudyCreate"]["properties"]["experiments"]
    assert study["items"]["enum"] == list(EXPERIMENT_PRESETS)
    assert study["description"].startswith("the MoE presets")
    for description in (create["preset"]["description"], study["description"],
                        SCHEMA["Presets"]["properties"]["experiments"]["description"]):  # fmt: skip
        assert all(name in description for name in EXPERIMENT_PRESETS), description
        assert "four experiments (" in description  # which four, said


def test_get_presets_serves_every_preset():
    from fastapi.testclient import TestClient

    with TestClient(create_app()) as client:
        presets = client.get("/presets").json()
    assert list(presets["experiments"]) == list(EXPERIMENT_PRESETS)
    assert list(presets["base"]) == list(BASE_PRESETS)


def test_the_cli_help_names_every_preset():
    runner = CliRunner()
    submit = runner.invoke(app, ["submit", "--help"], env={"COLUMNS": "400"}).output
    study = runner.invoke(app, ["study", "submit", "--help"], env={"COLUMNS": "400"}).output
    assert all(name in submit for name in [*EXPERIMENT_PRESETS, *BASE_PRESETS]), submit
    assert all(name in study for name in EXPERIMENT_PRESETS), study


def test_the_http_api_page_lists_every_preset():
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "http-api.md").read_text()
    listed = next(line for line in page.splitlines() if "`GET /presets` lists them" in line)
    start = page.index(listed)
    paragraph = page[page.rindex("\n\n", 0, start) : page.index("\n\n", start)]
    assert all(f"`{name}`" in paragraph for name in EXPERIMENT_PRESETS), paragraph


def test_a_dense_runs_unused_fields_are_every_routing_field_and_served():
    from fastapi.testclient import TestClient

    from moe_core.config import ROUTING_FIELDS, BaseConfig, ExperimentConfig
    from moe_core.presets import DENSE_UNUSED

    assert {f"config.{name}" for name in ROUTING_FIELDS} <= DENSE_UNUSED
    fields = {f"config.{n}" for n in ExperimentConfig.model_fields}
    fields |= {f"base.{n}" for n in BaseConfig.model_fields}
    assert DENSE_UNUSED <= fields  # each names a real field
    with TestClient(create_app()) as client:
        assert client.get("/presets").json()["dense_unused"] == sorted(DENSE_UNUSED)
