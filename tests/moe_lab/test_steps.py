"""`moe-lab metrics ID --steps` and Client.steps: a run's step points, written through
store.leases as a worker writes them (the real app and Postgres, no worker)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from moe_core.records import StepPoint, keys
from tests.factories import claim, step_point, write_steps
from tests.moe_lab.test_reads import MICRO, ok

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def run_with_points(http, settings) -> int:
    response = http.post("/experiments", json={**MICRO, "name": "steps", "preset": "baseline"})
    assert response.status_code == 201, response.text
    run = response.json()["id"]
    claim(settings.database_url, run, "w")
    points = [step_point(s, epoch=1 + (s > 4), loss=5.0 - s / 10) for s in (2, 4, 6)]
    write_steps(settings.database_url, run, "w", points, every=2)
    return run


def test_the_client_reads_the_points_and_those_after_a_step(api, run_with_points):
    answer = api.steps(run_with_points)
    assert answer["every"] == 2
    assert answer["points"] == [
        step_point(s, epoch=1 + (s > 4), loss=5.0 - s / 10) for s in (2, 4, 6)
    ]
    assert [p["step"] for p in api.steps(run_with_points, after_step=2)["points"]] == [4, 6]


def test_metrics_steps_as_a_table_csv_and_json(cli, run_with_points):
    table = ok(cli("metrics", run_with_points, "--steps"))
    assert "a point every 2 steps" in table
    assert "grad norm" in table and "0.504" in table  # step 4's norm
    lines = [line for line in table.splitlines() if " 6 " in line and "4.4000" in line]
    assert lines, table  # step 6: its loss

    rows = list(
        csv.DictReader(io.StringIO(ok(cli("metrics", run_with_points, "--steps", "--csv"))))
    )
    assert list(rows[0]) == list(keys(StepPoint))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert [int(r["epoch"]) for r in rows] == [1, 1, 2]
    assert float(rows[2]["loss"]) == pytest.approx(4.4)

    answer = json.loads(ok(cli("metrics", run_with_points, "--steps", "--json")))
    assert [p["grad_norm"] for p in answer["points"]] == [0.502, 0.504, 0.506]


def test_metrics_steps_of_an_unknown_run_is_one_line(cli):
    result = cli("metrics", 999999, "--steps")
    assert result.exit_code != 0
    assert "999999" in result.stderr and len(result.stderr.strip().splitlines()) == 1
