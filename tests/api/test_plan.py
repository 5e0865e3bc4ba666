"""POST /experiments?dry_run=true: the resolved run, sized torch-free, nothing stored."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from store.db import session_scope
from store.models import Experiment, Study
from tests.factories import queued_messages, request_body

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)


def test_dry_run_answers_the_plan_and_stores_nothing(
    client, service_settings, redis_client, broker_prefix
):
    def stored() -> tuple[int, int]:
        with session_scope(service_settings.database_url) as session:
            rows = session.scalar(select(func.count()).select_from(Experiment))
        return rows, queued_messages(redis_client, broker_prefix)

    before = stored()
    body = request_body("plan", preset="top2")
    response = client.post("/experiments?dry_run=true", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert stored() == before
    assert answer["config"]["top_k"] == 2 and answer["base"]["max_train_tokens"] == 4096
    # 4096 tokens: 124 blocks of 33, 7 batches of 16, each 16 x 32 targets
    assert answer["steps_per_epoch"] == 7 and answer["tokens_per_epoch"] == 7 * 16 * 32
    assert answer["num_epochs"] == 2 and answer["dense"] is False
    assert 0 < answer["active_params"] < answer["params"]
    # the GPU memory it would take: float32 weights, and the rest beside them (bf16 on a GPU)
    memory = answer["gpu_memory"]
    assert memory["parameters"] == 4 * answer["params"] and memory["autocast_weights"] > 0
    assert memory["total"] > sum(v for k, v in memory.items() if k != "total")

    # a bad run is the same 422 with or without dry_run
    bad = client.post("/experiments?dry_run=true", json={**body, "config": {"top_k": 9}})
    assert bad.status_code == 422 and stored() == before
    # without a token cap the corpus decides: steps unknown
    spec = client.post("/experiments?dry_run=true", json={"name": "spec", "base_preset": "spec"})
    assert spec.status_code == 200 and spec.json()["steps_per_epoch"] is None
    assert stored() == before


def test_the_default_base_preset_is_the_engine_clis():
    import argparse

    from api.resolve import DEFAULT_BASE_PRESET
    from moe_core.__main__ import _add_common

    parser = argparse.ArgumentParser()
    _add_common(parser)
    assert parser.parse_args(["--out", "x"]).base == DEFAULT_BASE_PRESET


def test_a_study_dry_run_plans_each_run_and_stores_nothing(client, service_settings):
    def studies() -> int:
        with session_scope(service_settings.database_url) as session:
            return session.scalar(select(func.count()).select_from(Study))

    before = studies()
    body = request_body("s", seeds=2)
    response = client.post("/studies?dry_run=true", json={**body, "experiments": ["top2"]})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [run["dense"] for run in answer["runs"]] == [True, False]
    assert answer["runs"][1]["config"]["top_k"] == 2
    assert answer["runs"][0]["params"] == answer["runs"][0]["active_params"]
    assert answer["seeds"] == [1337, 1338]
    assert studies() == before


def test_a_stored_run_answers_its_plan_as_the_dry_run_did(client):
    body = request_body("planned", preset="top2")
    dry = client.post("/experiments?dry_run=true", json=body).json()
    run = client.post("/experiments", json=body).json()
    assert run["params"] is None  # no result yet: the plan is what knows the size
    stored = client.get(f"/experiments/{run['id']}/plan")
    assert stored.status_code == 200, stored.text
    assert stored.json() == dry
    assert client.get("/experiments/999999/plan").status_code == 404
