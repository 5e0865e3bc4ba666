"""The runs table as a tracker's (issue 28), in a real browser (tests/fixtures/browser.py)
against one real uvicorn and Postgres for the module, on runs written straight into the
store: a config column and a summary column chosen, sorted and filtered on the server; a
refused filter's message; grouping by study, sweep and preset with the checkboxes in one
column; the view from its URL alone; the name filter as one types."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

from local_deployment.processes import StartedProcesses
from moe_core.config import base_config, dense_config, get_experiment_configs
from moe_core.search import SweepConfig
from store import catalogue, sweeps
from store.db import session_scope
from tests.factories import result, succeed
from tests.fixtures.browser import docs_shot, wait_in_page

pytestmark = [pytest.mark.services, pytest.mark.browser]

ROWS = "[...document.querySelectorAll('#runs tbody tr[data-run]')].map(r => Number(r.dataset.run))"
HEADS = "[...document.querySelectorAll('#runs thead th')].map(t => t.dataset.column || '')"
GROUPS = (
    "[...document.querySelectorAll('#runs tr.group-head')].map(r => r.cells[1].textContent.trim())"
)


def seed(database: str) -> SimpleNamespace:
    """A study (dense, baseline, top2: finished), a sweep over capacity_factor (its dense
    run and two trials, queued) and two runs of no study (finished), on the micro base."""
    base = base_config("micro", num_epochs=2)
    presets = get_experiment_configs(base)
    with session_scope(database) as session:
        study = catalogue.create_study(session=session, name="capacity study", base=base,
                                       base_preset="micro", presets=["baseline", "top2"])  # fmt: skip
        members = [
            catalogue.create_experiment(
                session=session,
                name=name,
                base=base,
                config=config,
                preset=preset,
                dense=preset is None,
                study=study,
                base_preset="micro",
            ).id  # fmt: skip
            for name, preset, config in (
                ("dense", None, dense_config(base)),
                ("baseline", "baseline", presets["baseline"]),
                ("top2", "top2", presets["top2"]),
            )  # fmt: skip
        ]
        space = {"capacity_factor": {"choices": [1.0, 2.0]}}
        sweep, _ = sweeps.create_sweep(session=session, parallel=2, base=base, config=SweepConfig(
            base_preset="micro", method="grid", seeds=1, name="capacity sweep", space=space))  # fmt: skip
        session.flush()
        swept = [run.id for run in sweeps._runs(session, sweep.id)]
        wide = catalogue.create_experiment(
            session=session, name="solo wide", base=base, base_preset="micro", preset="top2",
            config=presets["top2"].model_copy(update={"capacity_factor": 3.0}))  # fmt: skip
        switch = catalogue.create_experiment(session=session, name="solo switch", base=base,
                                             base_preset="micro", preset="baseline",
                                             config=presets["baseline"])  # fmt: skip
        session.commit()
        solo = [wide.id, switch.id]
        study_id, sweep_id = study.id, sweep.id
    for run_id, val_ce, usage in zip(members + solo, (3.4, 3.1, 2.9, 2.7, 3.0),
                                     ((12.5,) * 8, (3.0,) + (13.8,) * 7, (12.5,) * 8,
                                      (9.0,) + (13.0,) * 7, (1.0,) + (14.1,) * 7), strict=True):  # fmt: skip
        succeed(database, run_id, result(val_ce, eval_usage=usage, dense=run_id == members[0]))
    return SimpleNamespace(members=members, swept=swept, solo=solo, study=study_id, sweep=sweep_id)


@pytest.fixture(scope="module")
def table(deployment, tmp_path_factory) -> SimpleNamespace:
    """One API for the module's pages, on a deployment of its own with `seed`'s runs."""
    settings = deployment()
    runs = seed(settings.database_url)
    with StartedProcesses(tmp_path_factory.mktemp("table-api")) as started:
        yield SimpleNamespace(url=started.api(settings).url, **vars(runs))


def listed(api, **params) -> list[int]:
    """The ids GET /experiments lists for `params`: what the table must show."""
    answer = httpx.get(f"{api.url}/experiments", params={"limit": 500, **params})
    assert answer.status_code == 200, answer.text
    return [item["id"] for item in answer.json()["items"]]


def shown(page, view: str) -> list[int]:
    """The rows, once the table shows `view` (its URL query: runs.js's table.dataset.view)."""
    wait_in_page(page, f"document.querySelector('#runs')?.dataset.view === {view!r}")
    return page.evaluate(ROWS)


@pytest.mark.console_allows("422")  # the refused filter's answer, which the page shows
def test_a_config_and_a_metric_column_sorted_and_filtered_over_every_run(table, page):
    page.goto(f"{table.url}/ui/#/?group=none&cols=id,name,preset")
    assert shown(page, "group=none&cols=id,name,preset") == listed(table)
    page.locator("#columns summary").click()
    docs_shot(page, "dashboard-runs-columns", full_page=False)
    page.fill("#column-find", "top_k")  # the chooser narrows to the field looked for
    assert page.locator("#columns label[data-key]:visible").all_inner_texts() == [" top_k"]
    page.locator("#columns input[name='config.top_k']").check()
    page.fill("#column-find", "usage")
    page.locator("#columns input[name='summary.min_usage']").check()
    page.locator("#columns summary").click()
    assert page.evaluate(HEADS) == ["", "id", "name", "preset", "config.top_k", "summary.min_usage"]
    cols = "cols=id,name,preset,config.top_k,summary.min_usage"
    shown(page, f"group=none&{cols}")
    cells = page.locator(f'#runs tr[data-run="{table.solo[1]}"] td').all_inner_texts()
    assert cells[1:] == [str(table.solo[1]), "solo switch", "baseline", "1", "1"]

    # a click on a header sorts every run on the server, lowest first; again, highest first
    page.locator("#runs thead th[data-column='summary.min_usage']").click()
    assert shown(page, f"sort=min_usage&group=none&{cols}") == listed(table, sort="min_usage")
    page.locator("#runs thead th[data-column='summary.min_usage']").click()
    assert shown(page, f"sort=-min_usage&group=none&{cols}") == listed(table, sort="-min_usage")
    assert (
        page.get_attribute("#runs th[data-column='summary.min_usage']", "aria-sort") == "descending"
    )

    # conditions on the config field and the metric, added with Enter, one chip each
    page.fill("#where", "top_k = 2, min_usage < 11")
    page.press("#where", "Enter")
    view = f"where=top_k+%3D+2&where=min_usage+%3C+11&sort=-min_usage&group=none&{cols}"
    assert shown(page, view) == [table.solo[0]]
    assert listed(table, where=["top_k=2", "min_usage<11"]) == [table.solo[0]]
    assert page.locator("#where-chips .chip").all_inner_texts() == ["top_k = 2×", "min_usage < 11×"]

    # a refused condition says why, adds no chip, and leaves the table as it was
    page.fill("#where", "topk = 2")
    page.press("#where", "Enter")
    page.wait_for_selector("#runs-error:not(:empty)")
    assert "no field 'topk' (did you mean 'top_k'?)" in page.text_content("#runs-error")
    assert page.locator("#where-chips .chip").count() == 2 and page.evaluate(ROWS) == [
        table.solo[0]
    ]
    assert page.input_value("#where") == "topk = 2"

    # the URL alone brings the same view back, in a fresh page
    url = page.url
    page.goto("about:blank")
    page.goto(url)
    assert shown(page, view) == [table.solo[0]]
    assert page.evaluate(HEADS) == ["", "id", "name", "preset", "config.top_k", "summary.min_usage"]
    assert page.locator("#where-chips .chip").count() == 2 and page.input_value("#group") == "none"
    assert (
        page.get_attribute("#runs th[data-column='summary.min_usage']", "aria-sort") == "descending"
    )
    # a chip's × takes its condition away
    page.locator("#where-chips button[aria-label='remove filter top_k = 2']").click()
    assert shown(page, f"where=min_usage+%3C+11&sort=-min_usage&group=none&{cols}") == listed(
        table, where="min_usage<11", sort="-min_usage"
    )


def test_groups_fold_keep_the_boxes_in_one_column_and_the_name_filter_applies_as_one_types(
    table, page
):
    cols = "id,name,status,preset,config.capacity_factor,val_ce,summary.min_usage,tokens_per_sec,created"
    page.goto(f"{table.url}/ui/#/?cols={cols}")
    shown(page, f"cols={cols}")
    # by study (the default): the study under its name, its runs in their own order
    assert page.evaluate(GROUPS) == ["▾ capacity study · 3 runs"]
    members = page.evaluate(
        "[...document.querySelectorAll('#runs tr.member')].map(r => Number(r.dataset.run))"
    )
    assert members == table.members
    boxes = page.evaluate("[...document.querySelectorAll('#runs tbody input[type=checkbox]')]"
                          ".map(b => b.getBoundingClientRect().x)")  # fmt: skip
    assert len(boxes) == len(listed(table)) + 1 and len(set(boxes)) == 1, boxes
    docs_shot(page, "dashboard-runs")

    page.select_option("#group", "sweep")
    shown(page, f"group=sweep&cols={cols}")
    assert page.evaluate(GROUPS) == ["▾ capacity sweep · 3 runs"]
    page.select_option("#group", "preset")
    shown(page, f"group=preset&cols={cols}")
    assert sorted(page.evaluate(GROUPS)) == [
        "▾ baseline · 4 runs",
        "▾ dense · 2 runs",
        "▾ top2 · 2 runs",
    ]
    boxes = page.evaluate("[...document.querySelectorAll('#runs tbody input[type=checkbox]')]"
                          ".map(b => b.getBoundingClientRect().x)")  # fmt: skip
    assert len(set(boxes)) == 1, boxes
    # a group's box ticks all its runs; its fold hides them, and the URL keeps the fold
    page.locator("#runs tr[data-group='preset:dense'] input").check()
    assert not page.is_disabled("text=Compare selected")
    page.locator("#runs tr[data-group='preset:dense'] button.fold").click()
    assert "fold=preset:dense" in page.evaluate("location.hash")
    dense = [table.members[0], table.swept[0]]
    assert not set(dense) & set(page.evaluate(ROWS))
    page.reload()
    rows = shown(page, f"group=preset&cols={cols}&fold=preset:dense")
    assert len(rows) == len(listed(table)) - 2 and not set(dense) & set(rows)
    # by any column: the capacity factor's values
    page.select_option("#group", "config.capacity_factor")
    shown(page, f"group=config.capacity_factor&cols={cols}")
    assert "▾ capacity_factor = 3 · 1 run" in page.evaluate(GROUPS)

    # the name filter applies as one types (no Enter, no change event)
    page.goto(f"{table.url}/ui/#/")
    shown(page, "")
    page.locator("#filter-name").press_sequentially("solo")
    assert shown(page, "name=solo") == listed(table, name="solo") == table.solo[::-1]
    assert page.evaluate("location.hash") == "#/?name=solo"
