"""The fair queue with a real worker of one slot: user A queues 12 runs, then user B one;
B's run is the next to start once a slot frees, not the 13th, and nothing is claimed twice
or lost on the way."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from pydantic import SecretStr

from tests.client import make_client, wait_finished
from tests.factories import fast_base, request_body
from tests.waiting import wait_for

pytestmark = pytest.mark.services  # real Postgres/Redis and a worker (see tests/fixtures/)

BOOTSTRAP = "bootstrap-secret"


def test_a_colleagues_run_starts_at_the_next_free_slot(deployment, start_worker):
    settings = deployment(api_token=SecretStr(BOOTSTRAP), runs_per_gpu=1)
    root = {"Authorization": f"Bearer {BOOTSTRAP}"}
    with make_client(settings) as api:
        bearer = {}
        for name in ("amy", "ben"):
            assert api.post("/users", json={"name": name, "role": "member"},
                            headers=root).status_code == 201  # fmt: skip
            token = api.post(f"/users/{name}/tokens", json={"name": "t"}, headers=root).json()
            bearer[name] = {"Authorization": f"Bearer {token['token']}"}
        api.headers.update(root)  # the test reads as the admin; amy and ben submit
        start_worker(settings, name="one-slot")
        # runs of a few seconds: ben submits while one of amy's trains
        body = {**request_body("a"), "base": fast_base(num_epochs=2, max_train_tokens=16384)}
        amys = [api.post("/experiments", json={**body, "name": f"amy-{i}"}, headers=bearer["amy"])
                .json()["id"] for i in range(12)]  # fmt: skip
        # ben submits while amy's first run holds the slot (nothing ran before: amy's was
        # first by submission order, as it should be)
        wait_for(lambda: any(api.get(f"/experiments/{i}").json()["status"] == "running"
                             for i in amys), timeout=120, interval=0.05, what="amy's run")  # fmt: skip
        bens = api.post("/experiments", json={**body, "name": "ben"}, headers=bearer["ben"]).json()
        submitted_at = datetime.fromisoformat(bens["created_at"])
        final = wait_finished(api, bens["id"], timeout=240)
        assert final["status"] == "succeeded", final["error"]
        for run_id in amys:  # the rest need not train
            api.post(f"/experiments/{run_id}/cancel")
        runs = [wait_finished(api, i, timeout=120) for i in amys] + [final]
    started = sorted((datetime.fromisoformat(r["started_at"]), r["owner"], r["id"])
                     for r in runs if r["started_at"] is not None)  # fmt: skip
    # (a run chosen just before ben's row was committed starts just after it: not a jump)
    after = [(at, owner) for at, owner, _ in started if at > submitted_at + timedelta(seconds=0.25)]
    # the first run to start after ben submitted is ben's: amy's earlier ones do not jump it
    assert after and after[0][1] == "ben", started
    # amy's runs that started before ben's each started once, one at a time
    assert all(r["attempts"] <= 1 for r in runs)
