"""GET /experiments/{id}/steps and the event stream's `steps` events: the worker's step
points (written here through store.leases, as a worker writes them; tests/worker has a
real one), in step order, ETag'd, resumable after a step."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import TypeAdapter

from api.schemas import StepsRead, SystemRead
from store import leases
from store.db import session_scope
from tests.api.test_following import events
from tests.client import submit
from tests.factories import (
    claim,
    record,
    result,
    step_point,
    system_reading,
    write,
    write_steps,
    write_system,
)

pytestmark = pytest.mark.services


@pytest.fixture()
def settings(deployment):
    return deployment(event_poll_seconds=0.05, metrics_max_age=0)


def test_steps_in_order_after_a_step_and_304_to_their_etag(client, settings):
    database = settings.database_url
    run = submit(client)
    path = f"/experiments/{run['id']}/steps"
    assert client.get(path).json() == {"experiment_id": run["id"], "every": None, "points": []}
    claim(database, run["id"], "w")
    write_steps(database, run["id"], "w", [step_point(s) for s in (3, 6, 9)], every=3)

    first = client.get(path)
    body = first.json()
    TypeAdapter(StepsRead).validate_python(body)  # the schema the OpenAPI document states
    assert body["every"] == 3
    assert body["points"] == [step_point(s) for s in (3, 6, 9)]
    etag = first.headers["etag"]
    assert client.get(path, headers={"If-None-Match": etag}).status_code == 304

    after = client.get(path, params={"after_step": 3})
    assert [p["step"] for p in after.json()["points"]] == [6, 9]
    assert after.headers["etag"] != etag
    again = client.get(
        path, params={"after_step": 3}, headers={"If-None-Match": after.headers["etag"]}
    )
    assert again.status_code == 304
    assert client.get(path, params={"after_step": 9}).json()["points"] == []

    write_steps(database, run["id"], "w", [step_point(6, loss=4.0), step_point(12)], every=3)
    changed = client.get(path, headers={"If-None-Match": etag})
    assert changed.status_code == 200  # a new point and a replayed one: a new body
    assert [(p["step"], p["loss"]) for p in changed.json()["points"]] == [
        (3, 5.0), (6, 4.0), (9, 5.0), (12, 5.0),
    ]  # fmt: skip


@pytest.mark.parametrize("after_step", ["-1", "x", "1.5", str(2**31)])
def test_a_bad_after_step_is_a_422_naming_it(client, after_step):
    run = submit(client)
    response = client.get(f"/experiments/{run['id']}/steps", params={"after_step": after_step})
    assert response.status_code == 422
    assert "after_step" in response.text


def test_steps_of_an_unknown_run_are_a_404(client):
    assert client.get("/experiments/999999/steps").status_code == 404


def test_the_event_stream_sends_step_points_and_resumes_after_a_step(client, settings, monkeypatch):
    monkeypatch.setattr("api.live.STEPS_PER_EVENT", 2)  # several events for a few points
    database = settings.database_url
    run = submit(client)
    claim(database, run["id"], "w")

    def worker() -> None:
        time.sleep(0.3)
        write_steps(database, run["id"], "w", [step_point(s) for s in (1, 2, 3)])
        time.sleep(0.3)
        write_steps(database, run["id"], "w", [step_point(4)])
        write(database, run["id"], "w", record(1, 3.0))
        time.sleep(0.3)
        write_steps(database, run["id"], "w", [step_point(s, epoch=2) for s in (5, 6)])
        with session_scope(database) as session:
            leases.finish_experiment(session=session, experiment_id=run["id"], owner="w",
                                     status="succeeded", result=result(3.0))  # fmt: skip

    thread = threading.Thread(target=worker)
    thread.start()
    seen = events(client, run["id"])
    thread.join()

    sent = [data for event, _, data in seen if event == "steps"]
    assert all(1 <= len(data["points"]) <= 2 for data in sent)
    points = [p for data in sent for p in data["points"]]
    # every point once, in order, as /steps serves them; the end after the last
    assert points == client.get(f"/experiments/{run['id']}/steps").json()["points"]
    assert [p["step"] for p in points] == [1, 2, 3, 4, 5, 6]
    assert seen[-1][0] == "status" and seen[-1][2]["status"] == "succeeded"
    assert seen[-1][1] == "1:6"  # the last epoch and the last step sent
    for event, event_id, data in seen:  # each id: the epoch and the step reached with it
        if event == "steps":
            assert event_id.split(":")[1] == str(data["points"][-1]["step"])

    # Reconnecting after epoch 1 and step 4: the last two points, no epoch, the end.
    resumed = events(client, run["id"], **{"Last-Event-ID": "1:4"})
    assert [e for e, _, _ in resumed] == ["steps", "status"]
    assert [p["step"] for p in resumed[0][2]["points"]] == [5, 6]
    # An id of the old form (an epoch alone) resumes the epochs and sends every point.
    old = events(client, run["id"], **{"Last-Event-ID": "1"})
    assert [p["step"] for e, _, d in old if e == "steps" for p in d["points"]] == [1, 2, 3, 4, 5, 6]
    assert not [e for e, _, _ in old if e == "epoch"]


def test_a_run_with_2000_points_serves_them_at_once(deployment):
    """The issue's bound: a run of 200 epochs and 2,000 step points loads its page in
    under 1 s (tests/api/test_dashboard.py times the page); /steps is one query, and
    cached for its polls."""
    from tests.api.test_dashboard import seed_long_run
    from tests.client import make_client

    settings = deployment()
    run_id = seed_long_run(settings.database_url)
    with make_client(settings) as api:
        api.get("/healthz")  # the app started: what is timed is the read
        started = time.perf_counter()
        cold = api.get(f"/experiments/{run_id}/steps")
        took = time.perf_counter() - started
        body = cold.json()
        assert len(body["points"]) == 2000 and body["every"] == 1
        assert [p["step"] for p in body["points"]] == list(range(1, 2001))
        started = time.perf_counter()
        warm = api.get(
            f"/experiments/{run_id}/steps", headers={"If-None-Match": cold.headers["etag"]}
        )
        warm_took = time.perf_counter() - started
    print(f"/steps with 2,000 points: {1e3 * took:.0f} ms cold, {1e3 * warm_took:.0f} ms cached")
    assert warm.status_code == 304
    assert took < 0.5, took  # a fraction of the page's second, on two busy cores
    assert warm_took < 0.1, warm_took


def test_system_points_in_time_order_and_404_for_no_run(client, settings):
    """GET /experiments/{id}/system: the worker's system readings (store.system_points),
    serialised as the schema says; reads are open to every role (test_teams walks every
    read route: 401 without a token, never 403)."""
    run = submit(client)
    path = f"/experiments/{run['id']}/system"
    assert client.get(path).json() == {"experiment_id": run["id"], "points": []}
    claim(settings.database_url, run["id"], "w")
    write_system(settings.database_url, run["id"], "w",
                 [system_reading(10), system_reading(5, cpu=250.0)])  # fmt: skip
    body = client.get(path).json()
    TypeAdapter(SystemRead).validate_python(body)
    assert [p["elapsed_s"] for p in body["points"]] == [5.0, 10.0]
    first = body["points"][0]
    assert first["cpu_percent"] == 250.0 and first["rss_mb"] == 512.0 and first["step"] == 50
    assert first["gpu_util"] is None and first["t"].startswith("2026-12-07T12:00:05")
    missing = client.get("/experiments/999999/system")
    assert missing.status_code == 404 and missing.json()["detail"] == "experiment 999999 not found"
