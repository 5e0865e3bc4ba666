"""The run page's system metrics in a real browser (tests/fixtures/browser.py) against a
real uvicorn and Postgres: a run's stored readings (store.system_points, written as the
worker writes them) drawn as its CPU, memory and GPU charts, value for value."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from store import leases
from store.db import session_scope
from store.models import Status
from tests.factories import (
    SYSTEM_START,
    claim,
    new_experiment,
    record,
    result,
    write,
    write_system,
)
from tests.fixtures.browser import docs_shot, wait_in_page

pytestmark = [pytest.mark.services, pytest.mark.browser]

EPOCHS, EVERY, READINGS = 3, 5, 48  # 4 minutes of a GPU run, a reading every 5 s


def readings() -> list[dict]:
    """A GPU run's readings: data preparation (one core, the GPU idle), then training."""
    out = []
    for i in range(READINGS):
        training = i >= 4
        epoch = EPOCHS * (i - 4) / (READINGS - 5) if training else 0.0
        out.append({
            "t": SYSTEM_START + timedelta(seconds=EVERY * i), "elapsed_s": float(EVERY * i),
            "step": round(epoch * 100) if training else None, "epoch": epoch,
            "cpu_percent": round(180 + 25 * math.sin(i / 3), 1) if training else 99.0,
            "rss_mb": round(1400 + 300 * (1 - math.exp(-i / 8)), 1),
            "gpu_util": round(88 + 6 * math.sin(i / 2), 1) if training else 0.0,
            "gpu_mem_mb": 6144.0 if training else 520.0,
            "gpu_power_w": round(410 + 40 * math.sin(i / 2), 1) if training else 75.0,
        })  # fmt: skip
    return out


def drawn(page, title: str) -> dict:
    return page.evaluate(
        """title => { const box = document.querySelector(`#system [data-chart="${title}"]`);
           return { axis: box.drawn.axis, data: box.plot.data.map(c => Array.from(c, v => v ?? null)) }; }""",
        title,
    )


def test_the_run_page_draws_its_stored_cpu_memory_and_gpu_readings(deployment, start_api, page):
    settings = deployment()
    database = settings.database_url
    run = new_experiment(database, "top2-gpu", num_epochs=EPOCHS)
    assert claim(database, run, "w").outcome is leases.ClaimOutcome.claimed
    for epoch in range(1, EPOCHS + 1):
        write(database, run, "w", record(epoch, 5.0 - 0.3 * epoch))
    stored = readings()
    write_system(database, run, "w", stored)
    with session_scope(database) as session:
        assert leases.finish_experiment(session=session, experiment_id=run, owner="w",
                                        status=Status.succeeded, result=result(4.1))  # fmt: skip
    url = start_api(settings).url
    page.goto(f"{url}/ui/#/run/{run}")
    page.wait_for_selector('#system [data-chart="GPU power"][data-drawn]')
    titles = page.eval_on_selector_all("#system [data-chart]", "cs => cs.map(c => c.dataset.chart)")
    assert titles == ["CPU", "Memory", "GPU utilisation", "GPU memory", "GPU power"]
    # on the page's x-axis (the epoch, by default): where training stood at each reading
    cpu = drawn(page, "CPU")
    assert cpu["axis"] == "epoch"
    by_x = dict(zip(cpu["data"][0], cpu["data"][1], strict=True))
    assert by_x[stored[-1]["epoch"]] == stored[-1]["cpu_percent"]
    memory = drawn(page, "Memory")
    assert max(v for v in memory["data"][1] if v is not None) == max(p["rss_mb"] for p in stored)
    # on wall time: every reading, in order, at its second
    page.select_option("select[name=x-axis]", "time")
    wait_in_page(
        page, "document.querySelector('#system [data-chart=\"CPU\"]').dataset.x === 'time'"
    )
    cpu = drawn(page, "CPU")
    assert cpu["data"] == [[p["elapsed_s"] for p in stored], [p["cpu_percent"] for p in stored]]
    page.select_option("select[name=x-axis]", "epoch")
    page.evaluate("document.querySelector('#system').scrollIntoView()")
    docs_shot(page, "run-system", full_page=False)
    # a running run with no reading yet says so; a finished one without any shows nothing
    running = new_experiment(database, "starting")
    claim(database, running, "w2")
    finished = new_experiment(database, "from-before")
    claim(database, finished, "w3")
    with session_scope(database) as session:
        assert leases.finish_experiment(session=session, experiment_id=finished, owner="w3",
                                        status=Status.succeeded, result=result(4.2))  # fmt: skip
    for run_id, shown in ((running, "#system #system-none"), (finished, None)):
        page.goto(f"{url}/ui/#/run/{run_id}")  # the same page: only its hash changes
        wait_in_page(page, f"document.querySelector('h1')?.textContent.includes('#{run_id}')"
                     " && document.querySelector('#system')?.dataset.read === '1'")  # fmt: skip
        if shown:
            assert "while the run trains" in page.inner_text(shown)
        else:
            assert page.inner_html("#system") == ""
