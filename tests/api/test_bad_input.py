"""Nothing bad is queued: a body the engine would reject on a worker, or a GPU could not
hold, is a 422 naming the field, with nothing stored and nothing queued; bad URLs are
422/404, never a 500."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from api.body_limit import MAX_BODY_BYTES
from api.resolve import LIMITS, MAX_ID
from store.db import session_scope
from store.models import Experiment, Study
from tests.factories import fast_base, queued_messages, request_body

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)


def post(client, path: str, body: dict):
    # json.dumps escapes NUL and lone surrogates (\\u0000, \\ud800) as a raw client would
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


def stored(settings) -> tuple[int, int]:
    with session_scope(settings.database_url) as session:
        return (
            session.scalar(select(func.count()).select_from(Experiment)),
            session.scalar(select(func.count()).select_from(Study)),
        )


@pytest.fixture()
def nothing_stored_or_queued(service_settings, redis_client, broker_prefix):
    before = stored(service_settings), queued_messages(redis_client, broker_prefix)
    yield
    assert (stored(service_settings), queued_messages(redis_client, broker_prefix)) == before


EXPERIMENT_BODIES = [
    # top_k above the experts there are
    ({"config": {"top_k": 9}}, ["body", "config", "top_k"]),
    ({"preset": "top2", "base": {"num_experts": 1}}, ["body", "config", "top_k"]),
    # fewer training tokens than one batch (16 x 33 on micro), validation than one block
    ({"base": {"max_train_tokens": 100}}, ["body", "base", "max_train_tokens"]),
    ({"config": {"batch_size": 256}}, ["body", "base", "max_train_tokens"]),
    ({"base": {"max_val_tokens": 20}}, ["body", "base", "max_val_tokens"]),
    # the sizes that protect a worker
    *[
        (
            {"config" if name in ("expert_dim", "batch_size") else "base": {name: limit + 1}},
            ["body", "config" if name in ("expert_dim", "batch_size") else "base", name],
        )
        for name, limit in LIMITS.items()
    ],  # fmt: skip
    ({"base": {"moe_layers": list(range(49))}}, ["body", "base", "moe_layers"]),
    ({"base": {"dataset_name": "x" * 201}}, ["body", "base", "dataset_name"]),
    # paths on a worker are the worker's
    ({"base": {"data_dir": "/etc"}}, ["body", "base", "data_dir"]),
    ({"base": {"cache_dir": "/tmp/x"}}, ["body", "base", "cache_dir"]),
    # base.batch_size is a dense run's; a MoE run's is config.batch_size
    ({"base": {"batch_size": 64}}, ["body", "base", "batch_size"]),
    # numbers finite, strings storable
    ({"name": "a\x00b"}, ["body", "name"]),
    ({"name": "a\ud800b"}, ["body", "name"]),
    ({"base": {"dataset_config": "wiki\x00"}}, ["body", "base", "dataset_config"]),
    ({"baseline_id": MAX_ID + 1}, ["body", "baseline_id"]),
]


@pytest.mark.parametrize(("body", "loc"), EXPERIMENT_BODIES)
def test_a_bad_experiment_is_422_naming_the_field(client, nothing_stored_or_queued, body, loc):
    request = {"name": "bad", "base_preset": "micro", **body}
    request["base"] = {**fast_base(), **body.get("base", {})}
    response = post(client, "/experiments", request)
    assert response.status_code == 422, response.text
    assert loc in [error["loc"] for error in response.json()["detail"]], response.text


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"NaN", b"Infinity"])
def test_a_number_that_is_not_finite_is_a_422(client, nothing_stored_or_queued, number):
    # JSON's 1e400 arrives as inf (Python's parser also takes NaN and Infinity)
    raw = b'{"name": "x", "base_preset": "micro", "base": {"learning_rate": %s}}' % number
    response = client.post(
        "/experiments", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert ["body", "base", "learning_rate"] in [e["loc"] for e in response.json()["detail"]]


def test_a_dense_run_takes_base_batch_size(client):
    body = request_body("dense", dense=True, base=fast_base(batch_size=8))
    response = client.post("/experiments", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["config"]["batch_size"] == 8


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"base": fast_base(batch_size=8)}, ["body", "base", "batch_size"]),
        ({"base": fast_base(num_experts=1), "experiments": ["top2"]}, ["body", "experiments", "top_k"]),
        # throughput_opt's batch of 32 needs 32 x 33 training tokens
        ({"base": fast_base(max_train_tokens=600)}, ["body", "base", "max_train_tokens"]),
        ({"base": fast_base(seq_len=10**6)}, ["body", "base", "seq_len"]),
        ({"base": {"data_dir": "/"}}, ["body", "base", "data_dir"]),
        ({"name": "s\x00"}, ["body", "name"]),
    ],
)  # fmt: skip
def test_a_bad_study_is_422_naming_the_field(client, nothing_stored_or_queued, body, loc):
    response = post(client, "/studies", {"name": "s", "base_preset": "micro", **body})
    assert response.status_code == 422, response.text
    assert loc in [error["loc"] for error in response.json()["detail"]], response.text


@pytest.mark.parametrize(
    ("path", "loc"),
    [
        ("/experiments?nmae=x", ["query", "nmae"]),
        ("/experiments?order=best", ["query", "order"]),
        ("/experiments?tag=a%20b", ["query", "tag"]),
        ("/experiments?name=a%00b", ["query", "name"]),
        ("/experiments?study_id=0", ["query", "study_id"]),
        ("/experiments?stauts=failed", ["query", "stauts"]),
        ("/studies?status=failed", ["query", "status"]),
        (f"/experiments?offset={2**63}", ["query", "offset"]),
        (f"/studies?offset={MAX_ID + 1}", ["query", "offset"]),
        (f"/experiments/{MAX_ID + 1}", ["path", "experiment_id"]),
        (f"/experiments/{2**63}/metrics", ["path", "experiment_id"]),
        (f"/experiments/{MAX_ID + 1}/verdict", ["path", "experiment_id"]),
        (f"/studies/{2**64}", ["path", "study_id"]),
    ],
)
def test_bad_urls_are_422_naming_the_parameter(client, path, loc):
    response = client.get(path)
    assert response.status_code == 422, response.text
    assert loc in [error["loc"] for error in response.json()["detail"]], response.text


def test_a_misspelt_dry_run_stores_nothing(client, nothing_stored_or_queued):
    body = request_body("x")
    for path in ("/experiments?dryrun=true", "/studies?dry-run=true"):
        response = client.post(path, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][0] == "query"


def test_the_largest_id_is_a_404(client):
    assert client.get(f"/experiments/{MAX_ID}").status_code == 404
    assert client.post(f"/experiments/{MAX_ID}/cancel").status_code == 404
    assert client.get(f"/studies/{MAX_ID}").status_code == 404


def test_a_422_does_not_echo_a_huge_input(client, nothing_stored_or_queued):
    response = client.post("/experiments", json={"name": "x" * 50_000, "base_preset": "micro"})
    assert response.status_code == 422
    assert len(response.content) < 2_000
    assert ["body", "name"] in [error["loc"] for error in response.json()["detail"]]


def test_a_body_over_the_limit_is_413_and_not_read(client, nothing_stored_or_queued):
    huge = {"name": "x", "base_preset": "micro", "base": {"dataset_config": "w" * 10_000_000}}
    response = post(client, "/experiments", huge)  # with a Content-Length
    assert response.status_code == 413
    assert "bytes" in response.json()["detail"]
    # without a Content-Length (chunked): counted as it arrives
    chunks = (b" " * 8192 for _ in range(20))
    chunked = client.post(
        "/studies",
        content=iter([b'{"name": "s", "base_preset": "micro"', *chunks, b"}"]),
        headers={"Content-Type": "application/json"},
    )
    assert chunked.status_code == 413, chunked.text


def test_a_body_under_the_limit_is_read(client):
    padded = json.dumps(request_body("x"))
    padded = padded[:-1] + " " * (MAX_BODY_BYTES - len(padded) - 1) + "}"
    response = client.post(
        "/experiments", content=padded, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "path",
    ["/experiments/1?bogus=1", "/experiments/1/logs?ofset=10", "/experiments/1/metrics?x=1",
     "/studies/1?seed=2", "/presets?all=1", "/workers?limit=3"],
)  # fmt: skip
def test_every_route_refuses_a_query_parameter_it_does_not_take(client, path):
    response = client.get(path)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "query"


@pytest.mark.parametrize(
    ("section", "field", "meant"),
    [("config", "topk", "top_k"), ("config", "capacity", "capacity_factor"),
     ("base", "hiddendim", "hidden_dim"), ("base", "epochs_num", "num_epochs")],
)  # fmt: skip
def test_a_misspelt_field_is_named_with_the_one_it_likely_meant(
    client, nothing_stored_or_queued, section, field, meant
):
    body = request_body("typo", preset="top2")
    body[section] = {**body.get(section, {}), field: 2}
    response = client.post("/experiments", json=body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", section, field] and error["type"] == "extra_forbidden"
    assert error["msg"].endswith(f"; did you mean {meant!r}?")


def test_an_unknown_field_like_none_gets_no_guess(client, nothing_stored_or_queued):
    response = client.post("/experiments", json={**request_body("x"), "config": {"zzz": 1}})
    assert response.json()["detail"][0]["msg"] == "Extra inputs are not permitted"
