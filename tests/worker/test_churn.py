"""Churn: a few dozen runs submitted while workers are SIGKILLed, told to stop (SIGTERM)
and started at seeded random times. Every run must end, each with exactly one row per
epoch, and none may be left running. Long: `-m 'not chaos'` skips it locally; CI runs it."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from tests.client import FINISHED, make_client, submit
from tests.factories import assert_one_row_per_epoch, fast_base
from tests.waiting import wait_for

pytestmark = [pytest.mark.services, pytest.mark.chaos]

RUNS = 16
MAX_WORKERS = 3
CHAOS_SECONDS = 34


def test_runs_survive_workers_coming_and_going(deployment, start_worker):
    rng = random.Random(20261125)
    settings = deployment()
    started = 0
    kills = terms = 0
    with make_client(settings) as api:

        def busy_names() -> set[str]:
            running = api.get("/experiments", params={"status": "running", "limit": 500})
            return {r["worker_name"].partition("@")[0] for r in running.json()["items"]}

        live: dict[str, object] = {}

        def start_one() -> None:
            nonlocal started
            name = f"churn{started}"
            started += 1
            live[name] = start_worker(settings, name=name, wait=False)

        for _ in range(MAX_WORKERS):
            start_one()
        pending = [rng.uniform(0, CHAOS_SECONDS * 0.6) for _ in range(RUNS)]
        submitted: list[dict] = []
        t0 = time.monotonic()
        next_event = t0 + rng.uniform(3, 5)
        # Each kind of event in turn, so that every kind happens whatever the timing; a kill
        # or a stop waits up to 2 s for a worker that holds a run (killing an idle one tests
        # little), then takes any live one.
        actions = itertools.cycle(("kill", "term", "start"))
        action, waiting_since = None, 0.0
        busy_kills = busy_terms = 0
        while time.monotonic() - t0 < CHAOS_SECONDS:
            now = time.monotonic() - t0
            for due in [d for d in pending if d <= now]:
                pending.remove(due)
                base = fast_base(num_epochs=rng.choice([2, 3]))
                submitted.append(submit(api, f"churn-{len(submitted)}", base=base))
            if time.monotonic() >= next_event:
                alive = {n: w for n, w in live.items() if w.process.poll() is None}
                live.clear()
                live.update(alive)
                if action is None:
                    action, waiting_since = next(actions), time.monotonic()
                busy = sorted(busy_names() & set(alive))
                if action != "start" and not busy and time.monotonic() - waiting_since < 2:
                    time.sleep(0.1)
                    continue
                if action == "start" or not alive:
                    if len(alive) < MAX_WORKERS:
                        start_one()
                else:
                    victim = live.pop(rng.choice(busy or sorted(alive)))
                    if action == "kill":
                        victim.kill()
                        kills, busy_kills = kills + 1, busy_kills + bool(busy)
                    else:
                        victim.terminate()
                        terms, busy_terms = terms + 1, busy_terms + bool(busy)
                    if len(live) < 1 or rng.random() < 0.7:
                        start_one()
                next_event = time.monotonic() + rng.uniform(1.5, 4)
                action = None
            time.sleep(0.1)

        for _ in range(MAX_WORKERS - sum(w.process.poll() is None for w in live.values())):
            start_one()  # the storm is over: enough workers to drain the queue

        def all_ended():
            items = api.get("/experiments", params={"limit": 500}).json()["items"]
            return items if all(r["status"] in FINISHED for r in items) else None

        runs = wait_for(all_ended, timeout=240, interval=1, what="every run to end")

    assert len(runs) == RUNS and kills >= 2 and terms >= 2, (len(runs), kills, terms)
    for run in runs:
        if run["status"] == "succeeded":
            assert run["current_epoch"] == run["num_epochs"]
        else:  # only the restart cap may end a run otherwise
            assert run["status"] == "failed" and "MOE_MAX_RESTARTS" in run["error"], run
        assert_one_row_per_epoch(settings.database_url, run)
    # What the storm did to runs: a busy worker killed means a takeover, one stopped a handback.
    assert busy_kills + busy_terms >= 1, (busy_kills, busy_terms)
    assert sum(r["restarts"] for r in runs) >= (1 if busy_kills else 0)
    assert sum(r["handbacks"] for r in runs) >= (1 if busy_terms >= 2 else 0)
    assert sum(r["status"] == "succeeded" for r in runs) >= RUNS - 2
