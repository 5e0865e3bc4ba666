"""The API's own description: typed request bodies, examples, errors, operation ids."""

from __future__ import annotations

import pytest

from api.specs import LIMITS, WORKER_ONLY
from moe_core.config import BaseConfig, ExperimentConfig
from tests.conftest import micro_base

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/conftest.py)


@pytest.fixture()
def openapi(client) -> dict:
    return client.get("/openapi.json").json()


def _schema(openapi: dict, ref_or_schema: dict) -> dict:
    ref = ref_or_schema.get("$ref")
    return openapi["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else ref_or_schema


def test_config_and_base_are_typed_with_every_engine_field(openapi):
    schemas = openapi["components"]["schemas"]
    for body, fields in [("ExperimentCreate", ("config", "base")), ("StudyCreate", ("base",))]:
        for name in fields:
            typed = _schema(openapi, schemas[body]["properties"][name])
            assert typed.get("additionalProperties") is False, (body, name)
            engine = ExperimentConfig if name == "config" else BaseConfig
            # all but the worker's own paths, which a client may not choose
            assert set(typed["properties"]) == set(engine.model_fields) - set(WORKER_ONLY)
    config = schemas["ConfigOverrides"]["properties"]
    # constraints and descriptions travel with the fields
    assert {"minimum": 1, "type": "integer"} in config["top_k"]["anyOf"]
    assert {"exclusiveMinimum": 0, "maximum": LIMITS["expert_dim"], "type": "integer"} in config[
        "expert_dim"
    ]["anyOf"]
    assert "experts each token is routed to" in config["top_k"]["description"]
    base = schemas["BaseOverrides"]["properties"]
    limit = LIMITS["vocab_size"]
    assert {"minimum": 300, "maximum": limit, "type": "integer"} in base["vocab_size"]["anyOf"]
    assert "256" in base["seq_len"]["description"]  # the spec default is said


def test_every_request_body_has_an_example_that_the_api_accepts(client, openapi):
    bodies = 0
    for path, operations in openapi["paths"].items():
        for operation in operations.values():
            if "requestBody" not in operation:
                continue
            bodies += 1
            schema = _schema(
                openapi, operation["requestBody"]["content"]["application/json"]["schema"]
            )
            assert schema.get("examples"), path
            for example in schema["examples"]:
                example = {**example, "base": {**example.get("base", {}), **micro_base()}}
                response = client.post(path, json=example)
                assert response.status_code == 201, response.text
    assert bodies == 2


def test_operation_ids_are_the_handlers_names(openapi):
    ids = [op["operationId"] for ops in openapi["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert openapi["paths"]["/experiments"]["post"]["operationId"] == "create_experiment"
    assert openapi["paths"]["/studies/{study_id}"]["get"]["operationId"] == "read_study"
    assert all("_experiments_" not in op_id and not op_id.endswith("_get") for op_id in ids)


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("post", "/experiments", {"401", "404", "422", "503"}),
        ("get", "/experiments/{experiment_id}", {"401", "404", "422", "503"}),
        ("get", "/experiments/{experiment_id}/result", {"401", "404", "409", "422", "503"}),
        ("get", "/experiments/{experiment_id}/verdict", {"401", "404", "409", "422", "503"}),
        ("post", "/experiments/{experiment_id}/cancel", {"401", "404", "409", "422", "503"}),
        ("post", "/studies", {"401", "422", "503"}),
        ("get", "/studies/{study_id}", {"401", "404", "422", "503"}),
        ("get", "/presets", {"401"}),
    ],
)
def test_every_error_status_declares_the_error_model(openapi, method, path, statuses):
    responses = openapi["paths"][path][method]["responses"]
    assert statuses <= set(responses)
    for code in statuses:
        schema = responses[code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorDetail"}, (path, code)
    error = openapi["components"]["schemas"]["ErrorDetail"]
    assert error["required"] == ["detail"]


def test_declared_errors_are_what_the_api_returns(client):
    missing = client.get("/experiments/999999")
    assert missing.status_code == 404 and isinstance(missing.json()["detail"], str)
    unknown = client.post("/experiments", json={"name": "x", "config": {"top_kk": 2}})
    assert unknown.status_code == 422
    assert ["body", "config", "top_kk"] in [e["loc"] for e in unknown.json()["detail"]]
    study = client.post("/studies", json={"name": "s", "base": {"hidden_size": 2}})
    assert study.status_code == 422
    assert ["body", "base", "hidden_size"] in [e["loc"] for e in study.json()["detail"]]
