"""Submissions under load and retries: every POST either stores and queues its run (201),
replays the original (200, same Idempotency-Key and body), or fails cleanly (503 with
Retry-After, 409) with nothing stored or queued. Against a real uvicorn, Postgres and
Redis: no worker, so every queued task stays countable in the broker."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import select

from store.db import session_scope
from store.models import Experiment, Study
from tests.factories import queued_messages, request_body

pytestmark = pytest.mark.services


def _stored(database: str) -> dict[int, Experiment]:
    with session_scope(database) as session:
        return {e.id: e for e in session.scalars(select(Experiment))}


async def _post_all(url: str, bodies: list[tuple[dict, dict]], in_flight: int) -> list:
    """POST each (body, headers) with at most `in_flight` requests open at once; a response,
    or the exception a client saw."""
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    gate = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def post(body: dict, headers: dict):
            async with gate:
                try:
                    return await client.post("/experiments", json=body, headers=headers)
                except httpx.HTTPError as exc:
                    return exc

        return await asyncio.gather(*(post(body, headers) for body, headers in bodies))


def test_200_submissions_at_100_in_flight_are_each_accounted_for(
    deployment, start_api, redis_client
):
    settings = deployment()
    api = start_api(settings)
    bodies = [(request_body(f"load-{i}"), {}) for i in range(200)]
    responses = asyncio.run(_post_all(api.url, bodies, in_flight=100))

    errors = [r for r in responses if isinstance(r, Exception)]
    assert not errors, errors[:3]
    statuses = sorted({r.status_code for r in responses})
    assert set(statuses) <= {201, 503}, [
        r.text for r in responses if r.status_code not in (201, 503)
    ][:3]
    refused = [r for r in responses if r.status_code == 503]
    assert all(r.headers.get("Retry-After") for r in refused)
    accepted = {r.json()["id"]: r.json()["name"] for r in responses if r.status_code == 201}
    stored = _stored(settings.database_url)
    # Every run a client was told about exists, and no other: no ghost runs.
    assert {i: e.name for i, e in stored.items()} == accepted
    assert queued_messages(redis_client, settings.broker_key_prefix) == len(accepted)
    # On this machine none has to be refused: the pool and the threads are sized together.
    assert len(accepted) == 200


def test_a_retried_post_returns_the_original(deployment, start_api, redis_client):
    settings = deployment()
    api = start_api(settings)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    with httpx.Client(base_url=api.url, timeout=30) as client:
        first = client.post("/experiments", json=request_body("once", tags=["a"]), headers=key)
        assert first.status_code == 201, first.text
        # The same request spelt differently (key order, a default given) is the same.
        again = client.post(
            "/experiments",
            json={"tags": ["a"], "dense": False, **request_body("once")},
            headers=key,
        )
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["Location"] == f"/experiments/{first.json()['id']}"
        other = client.post("/experiments", json=request_body("twice"), headers=key)
        assert other.status_code == 409
        assert "another body" in other.json()["detail"]
        bad = client.post(
            "/experiments", json=request_body("x"), headers={"Idempotency-Key": "a b"}
        )
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]

        study_key = {"Idempotency-Key": uuid.uuid4().hex}
        study = {"name": "s", "base_preset": "micro", "experiments": ["top2"]}
        made = client.post("/studies", json=study, headers=study_key)
        replay = client.post("/studies", json=study, headers=study_key)
        assert (made.status_code, replay.status_code) == (201, 200)
        assert replay.json()["id"] == made.json()["id"]
        assert replay.json()["members"] == made.json()["members"]
        changed = client.post("/studies", json={**study, "seeds": 2}, headers=study_key)
        assert changed.status_code == 409
    with session_scope(settings.database_url) as session:
        assert len(session.scalars(select(Study)).all()) == 1
    assert len(_stored(settings.database_url)) == 1 + 2  # the run, the study's two
    assert queued_messages(redis_client, settings.broker_key_prefix) == 3


def test_100_concurrent_duplicates_store_one_run(deployment, start_api, redis_client):
    settings = deployment()
    api = start_api(settings)
    headers = {"Idempotency-Key": f"dup-{uuid.uuid4().hex}"}
    responses = asyncio.run(
        _post_all(api.url, [(request_body("dup"), headers)] * 100, in_flight=100)
    )
    assert not [r for r in responses if isinstance(r, Exception)]
    codes = [r.status_code for r in responses]
    assert codes.count(201) == 1, sorted(set(codes))
    # The others get the original (200), or, while the first is still handing its run to
    # the broker, a 409 asking them to retry in a second.
    assert set(codes) <= {200, 201, 409}, [r.text for r in responses if r.status_code >= 300][:3]
    retry = [r for r in responses if r.status_code == 409]
    assert all(r.headers["Retry-After"] == "1" for r in retry)
    original = next(r.json()["id"] for r in responses if r.status_code == 201)
    assert {r.json()["id"] for r in responses if r.status_code == 200} <= {original}
    again = httpx.post(
        f"{api.url}/experiments", json=request_body("dup"), headers=headers, timeout=30
    )
    assert again.status_code == 200 and again.json()["id"] == original
    assert len(_stored(settings.database_url)) == 1
    assert queued_messages(redis_client, settings.broker_key_prefix) == 1


class SlowRefusingBroker:
    """A broker that takes a second to refuse: the first request's run is committed and
    waiting on it while a retry comes in."""

    def enqueue(self, experiment_ids):
        time.sleep(1.0)
        raise ConnectionError("broker down")


def test_a_retry_while_the_first_request_waits_on_the_broker_is_told_to_retry(deployment):
    from api.deps import get_queue
    from tests.client import make_client

    settings = deployment()
    with make_client(settings) as api:
        api.app.dependency_overrides[get_queue] = lambda: SlowRefusingBroker()
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first: dict = {}
        thread = threading.Thread(
            target=lambda: first.setdefault(
                "r", api.post("/experiments", json=request_body("r"), headers=key)
            )
        )
        thread.start()
        time.sleep(0.5)  # the first is committed and waiting on the broker
        retry = api.post("/experiments", json=request_body("r"), headers=key)
        thread.join()
        # Not a 200 naming a run that the first request then takes back.
        assert retry.status_code == 409 and retry.headers["Retry-After"] == "1", retry.text
        assert first["r"].status_code == 503
        assert "nothing was stored" in first["r"].json()["detail"]
        assert api.get("/experiments").json()["total"] == 0
