"""The dashboard's charts of any series, in a real browser against one API and one set of
runs for the module (written straight into the store, as a worker would): a chart of any
series a run logged, added with the picker; the compare page overlaying step curves and a
routing statistic of two runs; a log y axis on the data's own range with minor ticks;
smoothing that leaves a 3-epoch series where it was logged; tick labels from the first
point; and a running run's page (no verdict asked for, no console error; its parameters
from the dry-run plan)."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import httpx
import pytest

from local_deployment.processes import StartedProcesses
from moe_core.config import base_config, dense_config, get_experiment_configs
from store import catalogue, leases
from store.db import session_scope
from store.models import Status
from tests.api.test_dashboard_pages import drawn, ema, plotted
from tests.factories import claim, record, result, step_point, write, write_steps
from tests.fixtures.browser import docs_shot, wait_in_page

pytestmark = [pytest.mark.services, pytest.mark.browser]

STEPS_PER_EPOCH = 8


def epochs_of(train_ce: list[float], *, imbalance: float) -> list[dict]:
    """Epoch records with these training CEs (validation a little above), a MoE layer's
    imbalance that differs by run and layer and grows by epoch."""
    records = []
    for epoch, ce in enumerate(train_ce, start=1):
        rec = record(epoch, ce + 0.01)
        rec["val"] = {**rec["val"], "ce_loss": ce + 0.15}
        rec["steps"] = STEPS_PER_EPOCH
        for row in rec["expert_stats"]:
            row["imbalance"] = imbalance * row["layer"] + 0.01 * epoch
        records.append(rec)
    return records


def points_of(seed: int, epochs: int, decay: float = 0.9) -> list[dict]:
    """Step points: a CE falling from about 9.8 towards 5.4 (within one decade) and an aux
    loss from 0.3 over more than two decades (below 0.002 by step 24 at decay 0.8)."""
    rng = random.Random(seed)
    points = []
    for s in range(1, STEPS_PER_EPOCH * epochs + 1):
        point = step_point(s, epoch=1 + (s - 1) // STEPS_PER_EPOCH,
                           loss=5.4 + 4.4 * decay ** (s - 1) + rng.uniform(0, 0.05))  # fmt: skip
        point["aux_loss"] = 0.3 * (decay - 0.1) ** (s - 1)
        points.append(point)
    return points


def create(database: str, name: str, *, dense: bool = False, baseline: int | None = None,
           **config_fields) -> int:  # fmt: skip
    base = base_config("micro", num_epochs=3)
    config = dense_config(base) if dense else get_experiment_configs(base)["top2"]
    config = config.model_copy(update=config_fields)
    with session_scope(database) as session:
        run = catalogue.create_experiment(session=session, name=name, base=base, config=config,
                                          dense=dense, preset=None if dense else "top2",
                                          base_preset="micro", baseline_id=baseline)  # fmt: skip
        session.commit()
        return run.id


def train(database: str, run_id: int, epochs: list[dict], points: list[dict], *, done: bool):
    owner = f"charts-{run_id}"
    assert claim(database, run_id, owner).outcome is leases.ClaimOutcome.claimed
    for rec in epochs:
        write(database, run_id, owner, rec)
    write_steps(database, run_id, owner, points)
    if done:
        with session_scope(database) as session:
            assert leases.finish_experiment(session=session, experiment_id=run_id, owner=owner,
                                            status=Status.succeeded, result=result(5.6))  # fmt: skip


@pytest.fixture(scope="module")
def site(deployment, tmp_path_factory):
    """Two finished top2 runs of 3 epochs with step points (`a`, `b`), and a running one
    (`live`, against a dense baseline) in its first epoch: one epoch point, its step points."""
    settings = deployment()
    database = settings.database_url
    dense = create(database, "dense", dense=True)
    a, b = create(database, "top2-a"), create(database, "top2-b", dropout=0.2)
    train(database, a, epochs_of([9.5, 7.0, 5.42], imbalance=0.1), points_of(1, 3), done=True)
    train(
        database,
        b,
        epochs_of([9.2, 6.5, 5.3], imbalance=0.2),
        points_of(2, 3, decay=0.8),
        done=True,
    )
    live = create(database, "live", baseline=dense)
    train(database, live, epochs_of([9.0], imbalance=0.1), points_of(3, 1), done=False)
    with StartedProcesses(tmp_path_factory.mktemp("charts-api")) as started:
        api = started.api(settings)
        yield SimpleNamespace(url=api.url, a=a, b=b, live=live, dense=dense)


def column(chart: dict, label: str) -> list[float]:
    """One series' values, where it has a point."""
    return plotted(chart, label)[1]


def metrics(site, run_id: int) -> tuple[list[dict], list[dict]]:
    epochs = httpx.get(f"{site.url}/experiments/{run_id}/metrics").json()["epochs"]
    return epochs, httpx.get(f"{site.url}/experiments/{run_id}/steps").json()["points"]


def settle(page, where: str = "") -> None:
    wait_in_page(page, f"document.querySelectorAll('{where} [data-chart]').length > 0 && [...document"
                       f".querySelectorAll('{where} [data-chart]')].every(b => b.dataset.drawn === '1')")  # fmt: skip


def change(page, js: str) -> None:
    """A change to the chart settings, then the charts' redraw."""
    page.evaluate("document.querySelectorAll('[data-chart]').forEach(b => b.dataset.drawn = '')")
    page.evaluate(js)
    settle(page)


def open_run(page, site, run_id: int) -> None:
    page.goto(f"{site.url}/ui/#/run/{run_id}")  # a page of its own: no settings kept
    page.wait_for_selector("#chart-picker")
    settle(page, "#curves")


def add_chart(page, key: str) -> None:
    page.select_option("#series-picker", key)
    page.click("#chart-picker button[type=submit]")
    page.wait_for_selector(f'[data-key="{key}"][data-drawn="1"]')


def test_a_chart_of_any_series_the_run_logged(site, page):
    open_run(page, site, site.a)
    keys = page.eval_on_selector_all("#series-picker option", "os => os.map(o => o.value)")
    # every series of the records: epoch figures, step figures, routing statistics per layer
    for key in ("epoch:forward_time", "epoch:train_eval.ce_loss", "step:learning_rate",
                "expert_stats:imbalance:*", "expert_stats:z_loss:4", "eval_expert_stats:entropy:2"):  # fmt: skip
        assert key in keys
    assert not any(k.startswith("step:") and k[5:] in ("step", "tokens", "wall_time") for k in keys)
    epochs, points = metrics(site, site.a)

    add_chart(page, "expert_stats:imbalance:*")
    title = page.get_attribute('[data-key="expert_stats:imbalance:*"]', "data-chart")
    chart = drawn(page, title)
    assert chart["labels"] == ["layer 2", "layer 4"]
    for layer in (2, 4):
        logged = [
            next(r["imbalance"] for r in e["expert_stats"] if r["layer"] == layer) for e in epochs
        ]
        assert column(chart, f"layer {layer}") == pytest.approx(logged)
    add_chart(page, "step:grad_norm")
    chart = drawn(page, page.get_attribute('[data-key="step:grad_norm"]', "data-chart"))
    assert column(chart, "grad_norm per step") == pytest.approx([p["grad_norm"] for p in points])

    # kept through a reload; × removes one
    page.reload()
    page.wait_for_selector('[data-key="step:grad_norm"][data-drawn="1"]')
    assert page.locator("#added-charts [data-key]").count() == 2
    page.click('[data-key="expert_stats:imbalance:*"] button[data-action=remove]')
    assert page.eval_on_selector_all(
        "#added-charts [data-key]", "bs => bs.map(b => b.dataset.key)"
    ) == ["step:grad_norm"]


def test_smoothing_leaves_a_three_epoch_series_where_it_was_logged(site, page):
    open_run(page, site, site.a)
    epochs, points = metrics(site, site.a)
    change(page, "const r = document.querySelector('input[name=smoothing]'); r.value = '0.6';"
                 " r.dispatchEvent(new Event('input'))")  # fmt: skip
    chart = drawn(page, "Cross-entropy")
    train_ce = [e["train"]["ce_loss"] for e in epochs]
    assert train_ce[-1] == pytest.approx(5.42)
    assert column(chart, "train CE") == pytest.approx(train_ce)  # ends at 5.42, not 5.63
    assert column(chart, "val CE") == pytest.approx([e["val"]["ce_loss"] for e in epochs])
    assert "train CE (raw)" not in chart["labels"]
    # the step series is the one smoothed: its debiased EMA, its raw values beside it
    raw = [p["ce_loss"] for p in points]
    assert column(chart, "train CE per step (raw)") == pytest.approx(raw)
    smoothed = column(chart, "train CE per step")
    assert smoothed != pytest.approx(raw)
    assert smoothed == pytest.approx(ema(raw, 0.6))


def test_log_y_spans_the_data_with_minor_ticks(site, page):
    open_run(page, site, site.a)
    page.evaluate("document.querySelector('input[name=log-y]').click()")
    settle(page, "#curves")
    wait_in_page(
        page, "document.querySelector('[data-chart=\"Cross-entropy\"]').plot.scales.y.distr === 3"
    )
    epochs, points = metrics(site, site.a)

    # CE between about 5.3 and 9.9: an axis on that range (a few % beyond it), not one
    # snapped out to 1 to 10 or to 100
    chart = drawn(page, "Cross-entropy")
    values = [v for c in chart["data"][1:] for v in c if v is not None]
    low, high = chart["y"]
    assert min(values) / 1.05 < low <= min(values) and max(values) <= high < max(values) * 1.05
    ticks = dict(zip(chart["yTicks"]["splits"], chart["yTicks"]["values"], strict=True))
    assert {6, 7, 8, 9} <= set(ticks) <= {5, 6, 7, 8, 9, 10}
    assert all(ticks[t] == str(t) for t in ticks)  # each labelled: read off
    # an aux loss over two decades and more: a tick at each 2..9 x 10^k, labels on a few
    chart = drawn(page, "Auxiliary loss")
    aux = [p["aux_loss"] for p in points]
    low, high = chart["y"]
    assert min(aux) / 1.5 < low <= min(aux) and max(aux) <= high < max(aux) * 1.5
    ticks = dict(zip(chart["yTicks"]["splits"], chart["yTicks"]["values"], strict=True))
    assert all(low <= t <= high for t in ticks)
    for k in (-3, -2):  # every mantissa in the decades the data covers
        assert {round(m * 10**k, 6) for m in range(2, 10)} <= {round(t, 6) for t in ticks}
    labelled = {t for t, label in ticks.items() if label}
    unlabelled = {t for t, label in ticks.items() if not label}
    assert {0.01, 0.1} <= labelled and len(unlabelled) > len(labelled) >= 2
    assert ticks[0.01] == "0.01" and ticks[0.1] == "0.1"
    # the minor ticks draw a tick mark, no grid line (the grid on the labelled ones only)
    grid = page.evaluate(
        "(() => { const p = document.querySelector('[data-chart=\"Auxiliary loss\"]').plot;"
        " return p.axes[1].grid.filter(p, p.axes[1]._splits, 1).filter(v => v !== null); })()"
    )
    assert sorted(grid) == sorted(labelled)
    docs_shot(page, "dashboard-run-log", full_page=False)


def test_a_running_run_in_its_first_epoch(site, page):
    """Its charts have tick labels from the first point, the verdict is not asked for (no 409
    in the console: the page fixture fails on any console error), and its parameters are
    the dry-run plan's."""
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    open_run(page, site, site.live)
    # one epoch point: a chart of it alone still has ticks, labelled, around it
    chart = drawn(page, "Gating temperature")
    assert chart["data"][0] == [1] and chart["x"][0] < 1 < chart["x"][1]
    assert len([v for v in chart["xTicks"]["values"] if v]) >= 2
    # the step points of epoch 1 at 1/8, 2/8, ...: ticks in fractions of the epoch
    chart = drawn(page, "Cross-entropy")
    assert chart["x"] == [pytest.approx(1 / STEPS_PER_EPOCH), 1]
    labels = [v for v in chart["xTicks"]["values"] if v]
    assert len(labels) >= 3 and all(0 < float(v) <= 1 for v in labels)

    assert page.inner_text("#verdict-pending") == (
        "The verdict comes when the run and its baseline have succeeded."
    )
    assert not any(url.endswith("/verdict") for url in requests)
    planned = httpx.get(f"{site.url}/experiments/{site.live}/plan").json()
    assert httpx.get(f"{site.url}/experiments/{site.live}").json()["params"] is None
    cell = page.inner_text("#run-params").split("\n")[-1]
    assert cell == f"{planned['params']:,} / {planned['active_params']:,} (planned)"
    assert planned["active_params"] < planned["params"]


def test_compare_overlays_step_curves_and_a_routing_statistic(site, page):
    page.goto(f"{site.url}/ui/#/compare?ids={site.a},{site.b}")
    page.wait_for_selector("#chart-picker")
    settle(page, "#compare-curves")
    names = {site.a: f"top2-a #{site.a}", site.b: f"top2-b #{site.b}"}
    chart = drawn(page, "Training CE per step")
    assert chart["labels"] == list(names.values())  # one line a run, the legend by run name
    for run_id, name in names.items():
        _, points = metrics(site, run_id)
        assert column(chart, name) == pytest.approx([p["ce_loss"] for p in points])

    add_chart(page, "expert_stats:imbalance:4")
    chart = drawn(page, page.get_attribute('[data-key="expert_stats:imbalance:4"]', "data-chart"))
    assert chart["labels"] == list(names.values())
    for run_id, name in names.items():
        epochs, _ = metrics(site, run_id)
        logged = [
            next(r["imbalance"] for r in e["expert_stats"] if r["layer"] == 4) for e in epochs
        ]
        assert column(chart, name) == pytest.approx(logged)
    assert column(chart, names[site.a]) != pytest.approx(column(chart, names[site.b]))
    add_chart(page, "step:aux_loss")
    chart = drawn(page, page.get_attribute('[data-key="step:aux_loss"]', "data-chart"))
    assert chart["labels"] == list(names.values()) and len(column(chart, names[site.b])) == 24
    assert math.isclose(column(chart, names[site.a])[0], 0.3)
    docs_shot(page, "dashboard-compare")
