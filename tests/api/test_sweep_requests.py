"""POST /sweeps keeps the request contract of every other body: worker paths, sizes no GPU
holds, text Postgres cannot keep, numbers that are not finite and strings where numbers go
are a 422 naming the field (never a 500), checked before anything is stored or queued, on
the dry run and the real submit alike; a retried POST with its Idempotency-Key stores one
sweep; a broker that is down leaves nothing behind."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from api.submit import BROKER_RETRY_AFTER
from store.db import session_scope
from store.models import Experiment, Sweep
from tests.client import make_client
from tests.factories import fast_base, queued_messages

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)

HEALTHY = {"num_experts": 2, "top_k": 2, "capacity_factor": 2.0}


def sweep(**fields) -> dict:
    return {"name": "sw", "base_preset": "micro", "base": fast_base(num_epochs=2),
            "overrides": HEALTHY, "method": "grid", "seeds": 1,
            "space": {"capacity_factor": {"choices": [1.0, 2.0]}}, **fields}  # fmt: skip


def post(client, body: dict | bytes, query: str = ""):
    # json.dumps writes NUL as \u0000, as a raw client would; inf as Infinity
    content = body if isinstance(body, bytes) else json.dumps(body)
    return client.post(f"/sweeps{query}", content=content,
                       headers={"Content-Type": "application/json"})  # fmt: skip


def stored(settings) -> tuple[int, int]:
    with session_scope(settings.database_url) as session:
        return (
            session.scalar(select(func.count()).select_from(Experiment)),
            session.scalar(select(func.count()).select_from(Sweep)),
        )


@pytest.fixture()
def nothing_stored_or_queued(service_settings, redis_client, broker_prefix):
    before = stored(service_settings), queued_messages(redis_client, broker_prefix)
    yield
    assert (stored(service_settings), queued_messages(redis_client, broker_prefix)) == before


def base(**fields) -> dict:
    return {"base": {**fast_base(num_epochs=2), **fields}}


BAD = [
    # the worker's own paths: never a client's
    (base(data_dir="/srv/data"), ["body", "base", "data_dir"]),
    (base(cache_dir="/srv/cache"), ["body", "base", "cache_dir"]),
    # sizes no GPU holds, runs no worker finishes, seeds numpy refuses
    (base(hidden_dim=65536), ["body", "base", "hidden_dim"]),
    (base(num_epochs=100000), ["body", "base", "num_epochs"]),
    (base(num_epochs=1_000_000_000), ["body", "base", "num_epochs"]),
    (base(vocab_size=10_000_000), ["body", "base", "vocab_size"]),
    (base(num_layers=10_000), ["body", "base", "num_layers"]),
    (base(num_experts=100_000), ["body", "base", "num_experts"]),
    (base(seed=-1), ["body", "base", "seed"]),
    # text the deployment does not offer: nothing fetched from a hub on a client's word
    (base(dataset_name="imdb"), ["body", "base", "dataset_name"]),
    # a trial's batch size is its config's
    (base(batch_size=8), ["body", "base", "batch_size"]),
    # strings Postgres cannot keep, names a trial's run cannot carry
    ({"name": "a\x00b"}, ["body", "name"]),
    ({"name": "x" * 101}, ["body", "name"]),
    # strict JSON types
    (base(num_epochs="2"), ["body", "base", "num_epochs"]),
    ({"prune": 0}, ["body", "prune"]),
    ({"sampler_seed": False}, ["body", "sampler_seed"]),
    ({"seeds": "2"}, ["body", "seeds"]),
    ({"overrides": {**HEALTHY, "top_k": "2"}}, ["body", "overrides", "top_k"]),
    ({"overrides": {**HEALTHY, "expert_dim": 10**6}}, ["body", "overrides", "expert_dim"]),
    # the space: every value within its field's bounds, of its field's type
    (
        {"space": {"expert_dim": {"choices": [64, 65536]}}},
        ["body", "space", "expert_dim", "choices", 1],
    ),
    (
        {"space": {"num_experts": {"choices": [2, 100_000]}}},
        ["body", "space", "num_experts", "choices", 1],
    ),
    (
        {"space": {"batch_size": {"low": 8, "high": 5000}}, "method": "random", "trials": 2},
        ["body", "space", "batch_size", "high"],
    ),
    ({"space": {"top_k": {"choices": ["2"]}}}, ["body", "space", "top_k"]),
    ({"space": {"dropout": {"choices": [0.1, 1.5]}}}, ["body", "space", "dropout", "choices", 1]),
    ({"space": {"hidden_dim": {"choices": [64]}}}, ["body", "space", "hidden_dim"]),
    ({"space": {"data_dir": {"choices": ["/srv"]}}}, ["body", "space", "data_dir"]),
    ({"space": {}}, ["body", "space"]),
    ({"space": {"moe_layers": {"choices": [[0], [0, 0]]}}}, ["body", "space"]),
    ({"space": {"top_k": {"choices": [1, 16]}}}, ["body", "space"]),
    ({"parallel": 0}, ["body", "parallel"]),
]


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize(("change", "loc"), BAD)
def test_a_bad_sweep_is_a_422_naming_the_field(
    client, nothing_stored_or_queued, change, loc, dry_run
):
    response = post(client, sweep(**change), "?dry_run=true" if dry_run else "")
    assert response.status_code == 422, response.text
    locs = [error["loc"][: len(loc)] for error in response.json()["detail"]]
    assert loc in locs, response.text


NOT_FINITE = [
    (b'"base": {"learning_rate": 1e400}', ["body", "base", "learning_rate"]),
    (b'"overrides": {"aux_weight": Infinity}', ["body", "overrides", "aux_weight"]),
    (b'"space": {"aux_weight": {"choices": [0.01, NaN]}}', ["body", "space", "aux_weight"]),
    (b'"space": {"aux_weight": {"low": 0.001, "high": 1e400}}', ["body", "space", "aux_weight"]),
]


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize(("part", "loc"), NOT_FINITE)
def test_a_number_that_is_not_finite_is_a_422_never_a_500(
    client, nothing_stored_or_queued, part, loc, dry_run
):
    raw = b'{"name": "x", "base_preset": "micro", "method": "random", "trials": 2, %s%s}' % (
        part,
        b"" if b'"space"' in part else b', "space": {"aux_weight": {"choices": [0.01]}}',
    )
    response = post(client, raw, "?dry_run=true" if dry_run else "")
    assert response.status_code == 422, response.text
    assert loc in [error["loc"][: len(loc)] for error in response.json()["detail"]]
    # the connection stays usable: the next request on it is answered
    assert client.get("/sweeps").status_code == 200


def test_an_integer_field_is_searched_in_whole_numbers(client):
    plan = post(
        client, sweep(method="grid", space={"top_k": {"low": 1, "high": 2}}), "?dry_run=true"
    )
    assert plan.status_code == 200, plan.text
    assert plan.json()["grid_points"] == 2
    fraction = post(client, sweep(method="random", trials=2,
                                  space={"top_k": {"low": 1, "high": 2.5}}))  # fmt: skip
    assert fraction.status_code == 422
    assert fraction.json()["detail"][0]["loc"][:3] == ["body", "space", "top_k"]


def test_the_space_keeps_the_order_given(client):
    body = sweep(space={"top_k": {"choices": [2]}, "capacity_factor": {"choices": [1.0, 2.0]}})
    response = post(client, body)
    assert response.status_code == 201, response.text
    assert response.json()["fields"] == ["top_k", "capacity_factor"]
    assert list(response.json()["config"]["space"]) == ["top_k", "capacity_factor"]
    client.post(f"/sweeps/{response.json()['id']}/cancel")


def test_a_retried_sweep_is_stored_once(client, service_settings):
    body = sweep(name="retried")
    key = {"Idempotency-Key": "sweep-retry-1"}
    first = client.post("/sweeps", json=body, headers=key)
    assert first.status_code == 201, first.text
    before = stored(service_settings)
    again = client.post("/sweeps", json=body, headers=key)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["dense_run_ids"] == first.json()["dense_run_ids"]
    other = client.post("/sweeps", json={**body, "seeds": 2}, headers=key)
    assert other.status_code == 409
    assert f"sweep {first.json()['id']}" in other.json()["detail"]
    assert stored(service_settings) == before
    client.post(f"/sweeps/{first.json()['id']}/cancel")


def test_an_unreachable_broker_is_a_503_with_the_routes_retry_after_and_stores_nothing(
    service_settings,
):
    settings = service_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    before = stored(settings)
    with make_client(settings) as client:
        response = client.post("/sweeps", json=sweep(name="lost"))
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == str(BROKER_RETRY_AFTER)
    assert "nothing was stored" in response.json()["detail"]
    assert stored(settings) == before


def test_an_offered_dataset_is_accepted(deployment):
    settings = deployment(datasets=["wikitext/wikitext-2-v1", "wikitext/wikitext-103-v1"])
    with make_client(settings) as client:
        body = sweep(**base(dataset_config="wikitext-103-v1"))
        assert post(client, body, "?dry_run=true").status_code == 200
        refused = post(client, sweep(**base(dataset_name="imdb")), "?dry_run=true")
    assert refused.status_code == 422
    (error,) = refused.json()["detail"]
    assert error["type"] == "dataset_not_offered"
    assert "wikitext/wikitext-103-v1" in error["msg"]
