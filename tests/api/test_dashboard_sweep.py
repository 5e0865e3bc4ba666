"""The sweep page in a real browser (tests/fixtures/browser.py) against a real uvicorn and
Postgres: the trials ranked, a parallel-coordinates line per trial placed by its values and
objective, a collapsed router marked and never best, the objective against each field."""

from __future__ import annotations

import re

import pytest

from moe_core.search import SweepConfig
from store import sweeps
from store.db import session_scope
from store.models import Sweep, SweepStatus
from tests.fixtures.browser import docs_shot

pytestmark = [pytest.mark.services, pytest.mark.browser]

# number -> (state, objective mean, SE)
TRIALS = {
    0: ("complete", -0.05, 0.01),
    1: ("complete", 0.02, 0.01),
    2: ("tertiary_failed", -0.20, 0.02),  # the lowest loss, but a collapsed router
    3: ("pruned", None, None),
}


def seed_sweep(database: str) -> int:
    config = SweepConfig(base_preset="micro", method="grid", seeds=2, name="capacity", space={
        "capacity_factor": {"choices": [1.0, 1.5]}, "aux_weight": {"choices": [0.001, 0.01]}})  # fmt: skip
    with session_scope(database) as session:
        sweep, _ = sweeps.create_sweep(
            session=session, config=config, base=config.base_config(), parallel=4
        )
        session.flush()
        for trial in sweep.trials:
            state, mean, se = TRIALS[trial.number]
            trial.state = state
            if mean is not None:
                trial.objective = {"name": "delta_val_ce", "mean": mean, "se": se, "ci_low": mean - 4 * se,
                                   "ci_high": mean + 4 * se, "p_value": 0.04, "significant": abs(mean) > 4 * se}  # fmt: skip
                trial.verdict = {"passed": state == "complete" and mean < 0}
            if state == "pruned":
                trial.pruned_at_epoch = 2
        sweep.status, sweep.best_trial = SweepStatus.finished, 0
        sweep.importance = {"capacity_factor": 0.7, "aux_weight": 0.3}
        session.commit()
        return sweep.id


@pytest.fixture()
def sweep_page(deployment, start_api, page):
    settings = deployment()
    sweep_id = seed_sweep(settings.database_url)
    url = start_api(settings).url
    page.goto(f"{url}/ui/#/sweep/{sweep_id}")
    page.wait_for_selector("svg.parcoords polyline")
    return page, sweep_id, settings


def test_the_sweep_page_ranks_trials_draws_each_and_never_names_a_collapsed_router_best(sweep_page):
    page, sweep_id, settings = sweep_page
    lines = page.eval_on_selector_all(
        "svg.parcoords polyline.trial",
        """ls => ls.map(l => ({
        trial: Number(l.dataset.trial), cls: l.getAttribute('class'), stroke: l.getAttribute('stroke'),
        dash: l.getAttribute('stroke-dasharray'), points: l.getAttribute('points')}))""",
    )
    assert [line["trial"] for line in lines] == [0, 1, 2, 3]
    by = {line["trial"]: line for line in lines}
    assert "tertiary_failed" in by[2]["cls"] and by[2]["dash"] and by[2]["stroke"] == "#cf222e"
    assert "pruned" in by[3]["cls"]
    points = {
        n: [tuple(map(float, p.split(","))) for p in line["points"].split()]
        for n, line in by.items()
    }
    # two fields, then the objective; the pruned trial has no objective point
    assert [len(points[n]) for n in range(4)] == [3, 3, 3, 2]
    # lower drawn lower, on every chart: -0.20 (collapsed) below -0.05 below +0.02
    assert points[2][2][1] > points[0][2][1] > points[1][2][1]
    for field in ("capacity_factor", "aux_weight"):
        cy = page.eval_on_selector_all(f"svg.scatter[data-field={field}] circle",
                                       "cs => cs.map(c => [Number(c.dataset.trial), Number(c.getAttribute('cy'))])")  # fmt: skip
        assert [n for n, _ in sorted(cy, key=lambda d: -d[1])] == [2, 0, 1]
    assert "lower is better" in page.eval_on_selector("svg.parcoords", "s => s.textContent")
    # at the page's width (1,400 px less its margins), not a thumbnail
    main = page.eval_on_selector("main", "m => m.clientWidth")
    assert (
        page.eval_on_selector("svg.parcoords", "s => s.getBoundingClientRect().width") > 0.9 * main
    )
    # each field's value placed on its axis: capacity 1.0 at the bottom, 1.5 at the top
    with session_scope(settings.database_url) as session:
        params = {t.number: t.params for t in session.get(Sweep, sweep_id).trials}
    for n in range(4):
        low = params[n]["capacity_factor"] == 1.0
        assert (
            points[n][0][1] == max(p[0][1] for p in points.values())
            if low
            else min(p[0][1] for p in points.values())
        )

    rows = page.eval_on_selector_all(
        "table.trials tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]  # ranked (0 best, then 1), then the rest
    assert (
        rows[0][2] == "-0.0500"
        and rows[2][1] == "tertiary failed"
        and rows[3][1] == "pruned (epoch 2)"
    )
    assert "best: trial 0" in page.inner_text("main")
    assert re.search(
        r"importance \(fANOVA\): capacity_factor 0\.70, aux_weight 0\.30", page.inner_text("main")
    )

    scatters = page.eval_on_selector_all(
        "svg.scatter",
        """ss => ss.map(s => ({
        field: s.dataset.field, dots: [...s.querySelectorAll('circle')].map(c => Number(c.dataset.trial))}))""",
    )
    assert [s["field"] for s in scatters] == ["capacity_factor", "aux_weight"]
    assert all(sorted(s["dots"]) == [0, 1, 2] for s in scatters)  # the judged trials

    # a drag down the capacity axis from its top to its middle keeps the trials at 1.5
    box = page.eval_on_selector("svg.parcoords rect.brush-area[data-axis=capacity_factor]",
                                "r => { const b = r.getBoundingClientRect(); return [b.x, b.y, b.width, b.height]; }")  # fmt: skip
    x, top, height = box[0] + box[2] / 2, box[1], box[3]
    page.mouse.move(x, top + 2)
    page.mouse.down()
    page.mouse.move(x, top + height * 0.3, steps=4)
    page.mouse.move(x, top + height * 0.6, steps=4)
    page.mouse.up()
    kept = [n for n in range(4) if params[n]["capacity_factor"] == 1.5]
    dimmed = "[...document.querySelectorAll('svg.parcoords polyline.dimmed')].map(l => Number(l.dataset.trial))"
    assert sorted(page.evaluate(dimmed)) == sorted(set(range(4)) - set(kept))
    assert page.inner_text("#brushed").startswith("2 of 4 trials in the brush (capacity_factor)")
    assert page.get_attribute("#brushed", "data-trials") == ",".join(map(str, kept))
    marked = page.eval_on_selector_all(
        "table.trials tr.in-brush", "rs => rs.map(r => Number(r.dataset.trial))"
    )
    assert sorted(marked) == kept
    docs_shot(page, "sweep")
    page.mouse.click(x, top + height / 2)  # a click on the axis clears its brush
    assert page.evaluate(dimmed) == [] and page.inner_text("#brushed") == ""

    # each line links to its trial's run
    href = page.eval_on_selector(
        "svg.parcoords polyline[data-trial='1']", "l => l.closest('a').getAttribute('href')"
    )
    run_id = int(href.removeprefix("#/run/"))
    with session_scope(settings.database_url) as session:
        from store.models import Experiment

        assert session.get(Experiment, run_id).trial_number == 1


def test_a_sweep_without_a_best_says_why_and_reads_on_a_phone(sweep_page, browser):
    _, _, settings = sweep_page
    with session_scope(settings.database_url) as session:  # every trial's router collapsed
        sweep = session.get(Sweep, seed_sweep(settings.database_url))
        for trial in sweep.trials:
            trial.state = "tertiary_failed" if trial.objective else "pruned"
            trial.verdict = {
                **(trial.verdict or {}),
                "tertiary": {"passed": False, "min_usage": 0.8},
            }
        sweep.best_trial, sweep.importance = None, None
        session.commit()
        sweep_id = sweep.id
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    phone = context.new_page()
    try:
        phone.goto(f"{sweep_page[0].url.split('/ui/')[0]}/ui/#/sweep/{sweep_id}")
        phone.wait_for_selector("svg.parcoords polyline")
        why = phone.inner_text("#no-best")
        assert why.startswith("no best trial, none passed: 3 failed tertiary (a router collapsed: "
                              "every expert must get ≥ 5% of assignments; the least used got 0.8%), 1 pruned")  # fmt: skip
        assert "best: trial" not in phone.inner_text("main")
        # what ran is still ranked, by its objective: -0.20, -0.05, +0.02, then the pruned
        rows = phone.eval_on_selector_all(
            "table.trials tbody tr", "rs => rs.map(r => Number(r.dataset.trial))"
        )
        assert rows == [2, 0, 1, 3]
        # nothing wider than the phone but the trials table, which scrolls in its own box
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        width = phone.eval_on_selector("svg.parcoords", "s => s.getBoundingClientRect().width")
        assert 300 <= width <= 390
        docs_shot(phone, "sweep-390px", full_page=False)
    finally:
        context.close()


def test_the_sweeps_list_links_each_sweep(sweep_page):
    page, sweep_id, _ = sweep_page
    page.click("header nav a[href='#/sweeps']")
    page.wait_for_selector(f"a[href='#/sweep/{sweep_id}']")
    row = page.eval_on_selector(
        f"a[href='#/sweep/{sweep_id}']", "a => [...a.closest('tr').cells].map(c => c.textContent)"
    )
    assert row == [f"#{sweep_id}", "capacity", "admin", "finished", "grid", "4/4", "0"]
