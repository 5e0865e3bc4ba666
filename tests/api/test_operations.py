"""What operators and autoscalers read: GET /metrics (Prometheus) and GET /workers, behind
the token; and an unreachable database answers 503 with Retry-After, storing nothing."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from store import leases, workers
from store.db import session_scope
from tests.client import make_client
from tests.factories import claim, new_experiment, queued_messages, record, request_body, write

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_and_workers_describe_the_store(deployment):
    settings = deployment(api_token=SecretStr("t0ken"))
    url = settings.database_url
    queued, running, failed = (new_experiment(url) for _ in range(3))
    with session_scope(url) as session:
        workers.register(session=session, name="gpu0@node", host="node", pid=7, device="cuda:0")
        workers.register(session=session, name="gpu1@node", host="node", pid=8, device="cuda:0")
    claim(url, running, "node:7:x", worker_name="gpu0@node")
    write(url, running, "node:7:x", {**record(1, 5.0), "duration": 12.0})
    claim(url, failed, "node:8:y", worker_name="gpu1@node")
    claim(url, failed, "node:8:z", worker_name="gpu1@node", stale_after=-1)  # a takeover
    with session_scope(url) as session:
        leases.finish_experiment(session=session, experiment_id=failed, owner="node:8:z",
                               status="failed", error="boom")  # fmt: skip

    headers = {"Authorization": "Bearer t0ken"}
    with make_client(settings) as api:
        assert api.get("/metrics").status_code == 401
        assert api.get("/workers").status_code == 401
        response = api.get("/metrics", headers=headers)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        values = samples(response.text)
        listed = api.get("/workers", headers=headers).json()

    assert values[("moe_runs", (("status", "queued"),))] == 1
    assert values[("moe_runs", (("status", "running"),))] == 1
    assert values[("moe_runs", (("status", "failed"),))] == 1
    assert values[("moe_queued_runs", ())] == 1
    assert values[("moe_oldest_queued_run_age_seconds", ())] >= 0
    assert values[("moe_workers_live", ())] == 2
    assert values[("moe_workers_busy", ())] == 1
    assert values[("moe_epochs_finished_total", ())] == 1
    assert values[("moe_epoch_duration_seconds_count", ())] == 1
    assert values[("moe_epoch_duration_seconds_sum", ())] == 12.0
    assert values[("moe_epoch_duration_seconds_bucket", (("le", "5.0"),))] == 0
    assert values[("moe_epoch_duration_seconds_bucket", (("le", "15.0"),))] == 1
    assert values[("moe_run_takeovers_total", ())] == 1
    assert values[("moe_run_restarts_total", ())] == 1
    assert values[("moe_run_handbacks_total", ())] == 0

    assert listed["total"] == 2
    gpu0, gpu1 = listed["items"]
    assert (gpu0["name"], gpu0["state"], gpu0["experiment_id"]) == ("gpu0@node", "busy", running)
    assert (gpu1["state"], gpu1["experiment_id"], gpu1["host"]) == ("idle", None, "node")
    assert queued not in (gpu0["experiment_id"], gpu1["experiment_id"])


def test_an_unreachable_database_is_a_503_with_retry_after_and_nothing_is_queued(
    deployment, redis_client
):
    settings = deployment()
    down = settings.model_copy(
        update={"database_url": "postgresql+psycopg://root@127.0.0.1:1/none?connect_timeout=2"}
    )
    before = queued_messages(redis_client, settings.broker_key_prefix)
    with make_client(down) as api:
        for method, path, body in [
            ("get", "/experiments", None),
            ("get", "/experiments/1", None),
            ("get", "/experiments/1/metrics", None),
            ("get", "/workers", None),
            ("post", "/experiments", request_body("x")),
            ("post", "/studies", {"name": "s", "base_preset": "micro"}),
        ]:
            response = api.request(method, path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"] == "5"
            assert "database" in response.json()["detail"]
    assert queued_messages(redis_client, settings.broker_key_prefix) == before
