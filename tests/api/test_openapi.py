"""The API's own description: typed request bodies, examples, errors, operation ids."""

from __future__ import annotations

import pytest

from api.resolve import LIMITS, WORKER_ONLY
from moe_core.config import BaseConfig, ExperimentConfig
from tests.client import submit
from tests.factories import fast_base, request_body

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)


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
    assert {"minimum": 1, "type": "integer"}.items() <= config["top_k"].items()
    assert {"exclusiveMinimum": 0, "maximum": LIMITS["expert_dim"], "type": "integer"}.items() <= (
        config["expert_dim"].items()
    )
    assert "experts each token is routed to" in config["top_k"]["description"]
    base = schemas["BaseOverrides"]["properties"]
    limit = LIMITS["vocab_size"]
    assert {"minimum": 300, "maximum": limit, "type": "integer"}.items() <= base[
        "vocab_size"
    ].items()
    assert "256" in base["seq_len"]["description"]  # the spec default is said
    # null only where the engine's value may be null (the base's experts, no cap)
    assert {"type": "null"} in config["num_experts"]["anyOf"]
    assert {"type": "null"} in base["max_train_tokens"]["anyOf"]


def test_every_request_body_has_an_example_that_the_api_accepts(client, openapi):
    bodies = 0
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            if "requestBody" not in operation:
                continue
            bodies += 1
            schema = _schema(
                openapi, operation["requestBody"]["content"]["application/json"]["schema"]
            )
            assert schema.get("examples"), path
            for example in schema["examples"]:
                if path.startswith("/users"):  # the user POST /users' example made, ada
                    response = client.request(method, path.format(name="ada"), json=example)
                    assert response.status_code < 300, (path, response.text)
                    continue
                if method == "patch":  # PATCH /experiments/{id}: a run's tags and note
                    run = submit(client, "example")
                    response = client.patch(path.format(experiment_id=run["id"]), json=example)
                    assert response.status_code == 200, response.text
                    continue
                example = {**example, "base": {**example.get("base", {}), **fast_base()}}
                response = client.post(path, json=example)
                assert response.status_code == 201, response.text
    # experiments, studies, sweeps; the PATCH of a run; a user, its change, a token
    assert bodies == 7


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


def _takes_null(field: dict) -> bool:
    return {"type": "null"} in field.get("anyOf", [])


@pytest.mark.parametrize("section", ["base", "config"])
def test_null_is_taken_exactly_where_the_schema_offers_it(client, openapi, section):
    # A client generated from the schema sends null where the schema offers it, and only
    # there: each such body is accepted; any other null is a 422 the schema announces.
    model = "BaseOverrides" if section == "base" else "ConfigOverrides"
    fields = openapi["components"]["schemas"][model]["properties"]
    offered = {name for name, field in fields.items() if _takes_null(field)}
    # the fields whose engine value may be null: the base's experts, no schedule, no cap,
    # the workers' policy on seeds trained together
    nullable = {"config": {"num_experts", "gating_temp_schedule"},
                "base": {"max_train_tokens", "max_val_tokens", "seeds_together"}}  # fmt: skip
    assert offered == nullable[section]
    for name in fields:
        body = request_body("nulls")
        body[section] = {**body.get(section, {}), name: None}
        response = client.post("/experiments?dry_run=true", json=body)
        if name in offered:
            assert response.status_code == 200, (name, response.text)
            assert response.json()[section][name] is None
        else:
            assert response.status_code == 422, (name, response.text)
            assert ["body", section, name] in [e["loc"] for e in response.json()["detail"]]


@pytest.mark.parametrize(
    ("field", "value", "taken_as"),
    [
        (("base", "num_epochs"), 2.0, 2),  # JSON Schema's integer: no fraction part
        (("base", "learning_rate"), 1, 1.0),
        (("config", "dropout"), 0, 0.0),
        (("base", "num_epochs"), "2", None),  # not an integer to a JSON Schema validator
        (("base", "num_epochs"), True, None),
        (("base", "num_epochs"), 2.5, None),
        (("base", "learning_rate"), "0.01", None),
        (("config", "dropless"), 1, None),
        (("config", "dropless"), "true", None),
        (("base", "moe_layers"), ["1"], None),
        (("base", "dataset_config"), 7, None),
        (("config", "gating_temp_schedule"), {"epochs": "2"}, None),
        (("config", "gating_temp_schedule"), {"epochs": 2.0}, {"epochs": 2}),
    ],
)
def test_a_body_takes_the_json_types_its_schema_names(client, field, value, taken_as):
    # Every body the API accepts is valid against /openapi.json: no "2" for 2, no true for 1.
    section, name = field
    body = request_body("types")
    body[section] = {name: value}
    response = client.post("/experiments?dry_run=true", json=body)
    if taken_as is None:
        assert response.status_code == 422, response.text
        assert ["body", section, name] == response.json()["detail"][0]["loc"][:3]
    else:
        assert response.status_code == 200, response.text
        got = response.json()[section][name]
        if isinstance(taken_as, dict):
            got = {key: got[key] for key in taken_as}
        assert got == taken_as and type(got) is type(taken_as)


def test_a_study_takes_seeds_2_0_as_2(client):
    body = request_body("s", seeds=2.0)
    response = client.post("/studies?dry_run=true", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["seeds"]) == 2


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        ({"config": {"top_k": 9}}, "top_k_over_experts"),
        ({"config": {"num_experts": 2, "top_k": 3}}, "top_k_over_experts"),
        ({"base": {"hidden_dim": 33}}, "hidden_dim_heads"),
        ({"base": {"num_layers": 2}}, "moe_layers_range"),  # the preset's [2, 4]
        ({"base": {"batch_size": 8}}, "base_batch_size_unused"),
        ({"base": {"max_train_tokens": 100}}, "train_tokens_under_batch"),
        ({"base": {"max_val_tokens": 20}}, "val_tokens_under_block"),
        ({"config": {"num_shared_experts": 8, "expert_dim": 4096}}, "shared_experts_width"),
        ({"dense": True, "preset": "top2"}, "dense_with_preset"),
        ({"dense": True, "baseline_id": 1}, "dense_with_baseline"),
    ],
)
def test_a_rule_across_fields_is_a_422_of_the_type_the_schema_states(client, openapi, body, rule):
    request = {"name": "rules", "base_preset": "micro", **body}
    request["base"] = {**fast_base(), **body.get("base", {})}
    response = client.post("/experiments?dry_run=true", json=request)
    assert response.status_code == 422, response.text
    assert rule in [error["type"] for error in response.json()["detail"]], response.text
    # stated where a client reads the body's fields
    schemas = openapi["components"]["schemas"]
    said = " ".join(
        text
        for model in ("ExperimentCreate", "ConfigOverrides", "BaseOverrides")
        for text in [
            schemas[model].get("description", ""),
            *(field.get("description", "") for field in schemas[model]["properties"].values()),
        ]
    )
    assert f"`{rule}`" in said


def test_a_study_states_that_base_batch_size_is_refused(openapi):
    study = openapi["components"]["schemas"]["StudyCreate"]
    assert "`base_batch_size_unused`" in study["properties"]["base"]["description"]
    assert "`top_k_over_experts`" in study["properties"]["experiments"]["description"]


def test_a_405_lists_every_method_the_path_takes(client, openapi):
    for path, operations in openapi["paths"].items():
        url = path.replace("{experiment_id}", "1").replace("{study_id}", "1")
        url = url.replace("{name}", "run.log")
        response = client.request("PUT", url)
        assert response.status_code == 405, (path, response.status_code)
        allowed = {method.strip() for method in response.headers["Allow"].split(",")}
        takes = {method.upper() for method in operations}
        if path == "/users/me":  # also the path of /users/{name} (no user is named `me`)
            takes |= {method.upper() for method in openapi["paths"]["/users/{name}"]}
        assert allowed == takes, path


def test_a_query_parameter_given_twice_is_a_422(client):
    response = client.get("/experiments?status=failed&status=queued")
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "status"]


def test_a_runs_files_keep_their_paths_ids_and_tag(openapi):
    # served by api.routes.run_files since it left api.routes.experiments: same schema
    served = {
        "/experiments/{experiment_id}/logs": "read_logs",
        "/experiments/{experiment_id}/artifacts": "list_artifacts",
        "/experiments/{experiment_id}/artifacts/{name}": "download_artifact",
        "/experiments/{experiment_id}/artifacts/tensorboard/{filename}": "download_event_file",
    }
    for path, operation_id in served.items():
        operation = openapi["paths"][path]["get"]
        assert (operation["operationId"], operation["tags"]) == (operation_id, ["experiments"])
