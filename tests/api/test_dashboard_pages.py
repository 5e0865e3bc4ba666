"""The dashboard's pages as a researcher reads them, in a real browser (tests/fixtures/
browser.py) against a real uvicorn and Postgres, on runs written as a worker would: the
charts' plotted values on each x-axis, smoothed and on a log scale; a study's mean ± SE band;
the verdict table, line for line what `moe-lab verdict` prints; the config and
hyper-parameter diffs; the runs table's columns; dark mode; a phone's width."""

from __future__ import annotations

import csv
import io
import math
import random
import re
import statistics
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from moe_core.config import base_config, dense_config, get_experiment_configs
from moe_lab.cli import app as cli_app
from moe_lab.client import Client
from store import catalogue, leases, workers
from store.db import session_scope
from store.models import Status, Worker
from tests.factories import claim, record, result, step_point, write, write_steps
from tests.fixtures.browser import docs_shot, wait_in_page
from tests.waiting import wait_for

pytestmark = [pytest.mark.services, pytest.mark.browser]

EPOCHS = 12


def noisy_epochs(seed: int, *, dense: bool = False, offset: float = 0.0) -> list[dict]:
    """Epoch records with a noisy falling loss (so smoothing has something to smooth) and
    epoch durations that differ (so wall time is not the epoch)."""
    rng = random.Random(seed)
    records = []
    for epoch in range(1, EPOCHS + 1):
        rec = record(epoch, 3 + 2 * 0.8**epoch + offset + rng.uniform(-0.15, 0.15),
                     layers=() if dense else (2, 4))  # fmt: skip
        rec["val"] = {**rec["val"], "ce_loss": rec["val"]["ce_loss"] + rng.uniform(-0.1, 0.1)}
        rec["duration"] = 1.0 + epoch % 3
        records.append(rec)
    return records


def finish(database: str, experiment_id: int, epochs: list[dict], run_result: dict,
           points: list[dict] = ()) -> None:  # fmt: skip
    owner = f"pages-{experiment_id}"
    assert claim(database, experiment_id, owner).outcome is leases.ClaimOutcome.claimed
    for rec in epochs:
        write(database, experiment_id, owner, rec)
    if points:
        write_steps(database, experiment_id, owner, list(points))
    with session_scope(database) as session:
        assert leases.finish_experiment(session=session, experiment_id=experiment_id, owner=owner,
                                        status=Status.succeeded, result=run_result)  # fmt: skip


def seed_pair(database: str, *, steps: bool = False) -> tuple[int, int]:
    """A dense run and a top2 run judged against it, both finished, with noisy epochs; the
    top2 run with two fields off its preset's defaults (dropout) and its base's (epochs),
    and with `steps` a step point every step (8 an epoch) as well."""
    base = base_config("micro", num_epochs=EPOCHS)
    config = get_experiment_configs(base)["top2"].model_copy(update={"dropout": 0.2})
    with session_scope(database) as session:
        dense = catalogue.create_experiment(session=session, name="dense", base=base,
                                            config=dense_config(base), dense=True, base_preset="micro")  # fmt: skip
        moe = catalogue.create_experiment(session=session, name="top2", base=base, config=config,
                                          preset="top2", baseline_id=dense.id, base_preset="micro")  # fmt: skip
        session.commit()
        ids = dense.id, moe.id
    finish(database, ids[0], noisy_epochs(1, dense=True), result(3.2, dense=True))
    rng = random.Random(5)
    points = [step_point(s, epoch=1 + (s - 1) // 8, loss=3 + 2 * 0.8 ** (s / 8) + rng.uniform(-0.3, 0.3))
              for s in range(1, 8 * EPOCHS + 1)] if steps else []  # fmt: skip
    finish(database, ids[1], noisy_epochs(2), result(3.1), points)
    return ids


@pytest.fixture()
def pair(deployment, start_api) -> SimpleNamespace:
    """A dense and a top2 run (seed_pair) on an API of the test's own: `url`, `dense`, `moe`."""
    settings = deployment()
    dense_id, moe_id = seed_pair(settings.database_url)
    return SimpleNamespace(url=start_api(settings).url, dense=dense_id, moe=moe_id)


@pytest.fixture()
def stepped_pair(deployment, start_api) -> SimpleNamespace:
    """The pair, its top2 run with step points: the run page as the documentation shows it."""
    settings = deployment()
    dense_id, moe_id = seed_pair(settings.database_url, steps=True)
    return SimpleNamespace(url=start_api(settings).url, dense=dense_id, moe=moe_id)


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average."""
    last, out = 0.0, []
    for n, value in enumerate(values, start=1):
        last = last * weight + (1 - weight) * value
        out.append(last / (1 - weight**n))
    return out


def drawn(page, title: str) -> dict:
    """What a chart draws: its x-axis, the series' labels and the plotted data (uPlot's);
    its x and y scales' [min, max] and each axis' ticks and their labels ("" unlabelled)."""
    return page.evaluate(
        """title => {
            const box = document.querySelector(`[data-chart="${title}"]`);
            const p = box.plot;
            const ticks = (a) => ({ splits: a._splits || [], values: a._values || [] });
            return { axis: box.drawn.axis, labels: box.drawn.labels,
                     data: p.data.map(c => Array.from(c, v => v ?? null)),
                     distr: p.scales.y.distr, shown: p.series.slice(1).map(s => s.show),
                     x: [p.scales.x.min, p.scales.x.max], y: [p.scales.y.min, p.scales.y.max],
                     xTicks: ticks(p.axes[0]), yTicks: ticks(p.axes[1]) };
        }""",
        title,
    )


def redrawn(page, change: str) -> None:
    """Make a change to the page's chart settings, then wait for the charts' redraw."""
    page.evaluate("document.querySelectorAll('[data-chart]').forEach(b => b.dataset.drawn = '')")
    page.evaluate(change)
    wait_in_page(page, "[...document.querySelectorAll('#curves [data-chart]')]"
                       ".every(b => b.dataset.drawn === '1')")  # fmt: skip


def test_run_charts_switch_axis_smooth_log_zoom_hide_and_download(pair, page):
    api, dense_id, moe_id = pair, pair.dense, pair.moe
    epochs = httpx.get(f"{api.url}/experiments/{moe_id}/metrics").json()["epochs"]
    run = httpx.get(f"{api.url}/experiments/{moe_id}").json()
    val_ce = [e["val"]["ce_loss"] for e in epochs]

    page.goto(f"{api.url}/ui/#/run/{moe_id}")
    page.wait_for_selector('#curves [data-chart="Cross-entropy"][data-drawn="1"]')
    page.evaluate("sessionStorage.removeItem('moe-lab-charts')")
    chart = drawn(page, "Cross-entropy")
    assert chart["axis"] == "epoch" and chart["data"][0] == list(range(1, EPOCHS + 1))
    assert chart["labels"] == ["train CE", "val CE", "train CE (eval mode)"]
    assert chart["data"][2] == pytest.approx(val_ce)

    select = "const s = document.querySelector('select[name=x-axis]'); s.value = '{}';" \
             " s.dispatchEvent(new Event('change'))"  # fmt: skip
    # step: each epoch's optimizer steps, summed
    redrawn(page, select.format("step"))
    chart = drawn(page, "Cross-entropy")
    steps = [sum(e["steps"] for e in epochs[: i + 1]) for i in range(EPOCHS)]
    assert chart["axis"] == "step" and chart["data"][0] == steps and steps[-1] == 8 * EPOCHS
    # tokens: each epoch's steps x batch_size x seq_len, summed
    redrawn(page, select.format("tokens"))
    per_step = run["config"]["batch_size"] * run["base"]["seq_len"]
    tokens = [per_step * sum(e["steps"] for e in epochs[: i + 1]) for i in range(EPOCHS)]
    chart = drawn(page, "Cross-entropy")
    assert chart["axis"] == "tokens" and chart["data"][0] == tokens
    assert chart["data"][2] == pytest.approx(val_ce)  # the same values, at other x
    # wall time: the epochs' durations, summed (1, 2, 3 s over and over: not the epoch)
    redrawn(page, select.format("time"))
    chart = drawn(page, "Cross-entropy")
    times = [sum(e["duration"] for e in epochs[: i + 1]) for i in range(EPOCHS)]
    assert chart["axis"] == "time" and chart["data"][0] == pytest.approx(times)
    redrawn(page, select.format("epoch"))

    # smoothing applies to step series only (this run has none): each epoch's figure is an
    # average over its steps already, and an EMA over a few of them would draw the line away
    # from what was logged. The epoch series stay as they are, with no raw line beside them.
    slider = "const r = document.querySelector('input[name=smoothing]'); r.value = '0.6';" \
             " r.dispatchEvent(new Event('input'))"  # fmt: skip
    redrawn(page, slider)
    chart = drawn(page, "Cross-entropy")
    assert chart["labels"] == ["train CE", "val CE", "train CE (eval mode)"]
    assert chart["data"][2] == pytest.approx(val_ce)
    assert chart["data"][2] != pytest.approx(ema(val_ce, 0.6))
    assert (
        page.locator('[data-chart="Cross-entropy"] .u-legend .u-series:not(.legend-hidden)').count()
        == 4
    )  # x + 3
    redrawn(page, slider.replace("0.6", "0"))

    # log y: a logarithmic y scale, the same values
    redrawn(page, "document.querySelector('input[name=log-y]').click()")
    chart = drawn(page, "Cross-entropy")
    assert chart["distr"] == 3 and chart["data"][2] == pytest.approx(val_ce)
    redrawn(page, "document.querySelector('input[name=log-y]').click()")
    assert drawn(page, "Cross-entropy")["distr"] == 1

    # a click on a legend entry hides its series; zoom, then reset to every epoch
    page.locator('[data-chart="Cross-entropy"] .u-legend .u-series').nth(2).click()
    assert drawn(page, "Cross-entropy")["shown"] == [True, False, True]
    page.evaluate(
        "document.querySelector('[data-chart=\"Cross-entropy\"]').plot.setScale('x', {min: 3, max: 6})"
    )
    scale = "(() => { const s = document.querySelector('[data-chart=\"Cross-entropy\"]').plot.scales.x;" \
            " return [s.min, s.max]; })()"  # fmt: skip
    assert page.evaluate(scale) == [3, 6]
    page.locator('[data-chart="Cross-entropy"] button[data-action=reset]').click()
    assert page.evaluate(scale) == [1, EPOCHS]
    assert drawn(page, "Cross-entropy")["shown"] == [True, False, True]  # still hidden

    # CSV: what the chart draws, a column per series; PNG: an image of it
    with page.expect_download() as download:
        page.locator('[data-chart="Cross-entropy"] button[data-action=csv]').click()
    assert download.value.suggested_filename == "cross-entropy.csv"
    rows = list(csv.reader(io.StringIO(open(download.value.path()).read())))
    assert rows[0] == ["epoch", "train CE", "val CE", "train CE (eval mode)"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, EPOCHS + 1))
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(val_ce)
    with page.expect_download() as download:
        page.locator('[data-chart="Cross-entropy"] button[data-action=png]').click()
    image = open(download.value.path(), "rb").read()
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 5000

    # a dense run: no MoE-only panels (no aux loss, no experts)
    page.goto(f"{api.url}/ui/#/run/{dense_id}")
    wait_in_page(page, f"document.querySelector('h1').innerText.endsWith('#{dense_id}') &&"
                       " document.querySelector('#curves [data-chart][data-drawn=\"1\"]') !== null")  # fmt: skip
    charts = page.eval_on_selector_all("#curves [data-chart]", "bs => bs.map(b => b.dataset.chart)")
    assert charts == ["Cross-entropy", "Loss (CE + aux)", "Tokens per second"]
    assert page.locator("#experts").count() == 0


def cli_verdict_lines(url: str, experiment_id: int) -> tuple[list[list[str]], str]:
    """`moe-lab verdict ID` as a shell on a wide terminal prints it: the table's rows as
    cells (mark, criterion, numbers, rule), and the significance line under it."""
    out = CliRunner().invoke(cli_app, ["verdict", str(experiment_id)], obj=Client(url),
                             env={"COLUMNS": "400"})  # fmt: skip
    assert out.exit_code == 0, out.output
    lines = [line.rstrip() for line in out.stdout.splitlines() if line.strip()]
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["criterion"])
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[header + 2 : -1]]
    return rows, lines[-1]


def test_the_verdict_table_says_what_the_cli_says(stepped_pair, page):
    api, moe_id = stepped_pair, stepped_pair.moe
    page.goto(f"{api.url}/ui/#/run/{moe_id}")
    page.wait_for_selector("#verdict tr[data-criterion]")
    shown = page.eval_on_selector_all(
        "#verdict tr[data-criterion]",
        "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))",
    )
    significance = page.locator("#verdict tr[data-significance] td").nth(2).inner_text()

    cli_rows, cli_significance = cli_verdict_lines(api.url, moe_id)
    assert shown == cli_rows
    assert significance == cli_significance
    # and both are the API's lines, word for word
    lines = httpx.get(f"{api.url}/experiments/{moe_id}/verdict").json()["lines"]
    assert [row[1:] for row in shown] == [[x["criterion"], x["summary"], x["rule"]] for x in lines]
    assert [row[0] for row in shown] == ["✓", "·", "✓", "✓"]
    assert significance.startswith("one seed: significance unknown")

    # the config: the fields that differ from the preset's defaults on the run's base preset
    differ = page.eval_on_selector_all(
        "#config-diff tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))"
    )
    assert differ == [["config.dropout", "0.2", "0.1"], ["base.num_epochs", str(EPOCHS), "2"]]
    assert not page.locator("#configuration details[open]").count()  # the whole of it folded
    page.wait_for_selector(
        '#curves[data-step-points="96"] [data-chart="Gradient norm"][data-drawn="1"]'
    )
    docs_shot(page, "dashboard-run-page")


def test_a_study_draws_each_preset_as_its_mean_over_seeds_with_a_standard_error_band(
    deployment, start_api, page
):
    settings = deployment()
    api = start_api(settings)
    study = httpx.post(f"{api.url}/studies", json={"name": "band", "base_preset": "micro",
                       "seeds": 3, "experiments": ["top2"], "base": {"num_epochs": EPOCHS}}).json()  # fmt: skip
    for i, member in enumerate(study["members"]):
        finish(settings.database_url, member["id"],
               noisy_epochs(10 + i, dense=member["dense"], offset=0.0 if member["dense"] else -0.2),
               result(3.2 if member["dense"] else 3.0, dense=member["dense"]))  # fmt: skip
    page.goto(f"{api.url}/ui/#/study/{study['id']}")
    page.wait_for_selector('#study-curves [data-chart="Validation CE"][data-drawn="1"]')
    chart = page.evaluate(
        """() => { const box = document.querySelector('#study-curves [data-chart="Validation CE"]');
                  return { labels: box.drawn.labels, data: box.plot.data.map(c => Array.from(c)),
                           bands: box.plot.bands.map(b => b.series) }; }"""
    )
    assert chart["data"][0] == list(range(1, EPOCHS + 1))
    for name, dense in (("top2", False), ("dense", True)):
        runs = [m for m in study["members"] if m["dense"] == dense]
        values = [[e["val"]["ce_loss"] for e in httpx.get(
            f"{api.url}/experiments/{m['id']}/metrics").json()["epochs"]] for m in runs]  # fmt: skip
        means = [statistics.fmean(at) for at in zip(*values, strict=True)]
        ses = [statistics.stdev(at) / math.sqrt(len(at)) for at in zip(*values, strict=True)]
        label = f"{name} (3 seeds)"
        at = {
            key: 1 + chart["labels"].index(key)
            for key in (label, f"{label} +1 SE", f"{label} −1 SE")
        }
        assert chart["data"][at[label]] == pytest.approx(means)
        assert chart["data"][at[f"{label} +1 SE"]] == pytest.approx(
            [m + s for m, s in zip(means, ses, strict=True)]
        )
        assert chart["data"][at[f"{label} −1 SE"]] == pytest.approx(
            [m - s for m, s in zip(means, ses, strict=True)]
        )
        assert [at[f"{label} +1 SE"], at[f"{label} −1 SE"]] in chart["bands"]
    # the preset's verdict over its seeds, in the API's words (its lines), folded under the table
    lines = httpx.get(f"{api.url}/studies/{study['id']}").json()["preset_verdicts"][0]["lines"]
    page.locator('details.preset-lines[data-preset="top2"] summary').click()
    shown = page.eval_on_selector_all(
        "#verdict-top2 tr[data-criterion]",
        "rows => rows.map(r => [...r.cells].map(c => c.innerText))",
    )
    assert [row[1:] for row in shown] == [[x["criterion"], x["summary"], x["rule"]] for x in lines]
    assert "over 3 seeds" in page.locator("#verdict-top2 tr[data-significance]").inner_text()
    docs_shot(page, "dashboard-study-band")


def test_compare_diffs_hyper_parameters_and_sorts_columns(pair, page):
    api, dense_id, moe_id = pair, pair.dense, pair.moe
    page.goto(f"{api.url}/ui/#/compare?ids={moe_id},{dense_id}")
    page.wait_for_selector("#hparams tbody tr")
    runs = [httpx.get(f"{api.url}/experiments/{i}").json() for i in (moe_id, dense_id)]
    # a dense run has no router: its routing fields never make a field differ
    unused = set(httpx.get(f"{api.url}/presets").json()["dense_unused"])
    assert {"config.top_k", "config.capacity_factor", "base.moe_layers"} <= unused
    expected = {
        f"{section}.{key}": [str(r[section][key]) for r in runs]
        for section in ("config", "base")
        for key in runs[0][section]
        if runs[0][section][key] != runs[1][section][key] and f"{section}.{key}" not in unused
    }
    rows = page.eval_on_selector_all(
        "#hparams tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))"
    )
    assert {row[0]: row[1:] for row in rows} == expected
    assert expected["config.dropout"] == ["0.2", "0.1"] and "config.top_k" not in expected
    assert runs[0]["config"]["top_k"] != runs[1]["config"]["top_k"]  # differing, yet not listed
    assert len(rows) == len(expected)

    # sortable: val CE ascending puts the MoE run (3.1 < 3.2) first, again: descending
    header = page.locator("#compare thead th", has_text="val CE")
    header.click()
    order = "document.querySelectorAll('#compare tbody tr')[0].dataset.run"
    assert page.evaluate(order) == str(moe_id)
    header.click()
    assert page.evaluate(order) == str(dense_id)


def test_runs_table_columns_are_chosen_and_kept_in_the_url(pair, page):
    api, dense_id, moe_id = pair, pair.dense, pair.moe
    page.goto(f"{api.url}/ui/#/?cols=id,name,params")
    page.wait_for_selector(f'#runs tr[data-run="{moe_id}"]')
    heads = "[...document.querySelectorAll('#runs thead th')].map(t => t.dataset.column || '')"
    assert page.evaluate(heads) == ["", "id", "name", "params"]
    page.locator("#columns summary").click()
    page.locator("#columns input[name=seed]").check()
    assert page.evaluate(heads) == ["", "id", "name", "params", "seed"]
    assert page.evaluate("location.hash") == "#/?cols=id,name,params,seed"
    page.reload()
    page.wait_for_selector(f'#runs tr[data-run="{moe_id}"]')
    assert page.evaluate(heads) == ["", "id", "name", "params", "seed"]
    cells = page.locator(f'#runs tr[data-run="{moe_id}"] td').all_inner_texts()
    assert cells[1:] == [str(moe_id), "top2", "1,000", "1337"]
    # sorted by id (on the server), descending on the second click; the study-less runs only
    page.locator("#runs thead th", has_text="id").click()
    wait_in_page(page, "document.querySelector('#runs').dataset.view.startsWith('sort=id&')")
    page.locator("#runs thead th", has_text="id").click()
    wait_in_page(page, "document.querySelector('#runs').dataset.view.startsWith('sort=-id&')")
    ids = page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run)")
    assert ids == [str(moe_id), str(dense_id)]


PHONE_PAGES = {  # the other pages at a phone's width: their hash, and what shows them drawn
    "compare": ("#/compare?ids={moe},{dense}", "#hparams"),
    "studies": ("#/studies", "h1"),
    "sweeps": ("#/sweeps", "h1"),
    "workers": ("#/workers", "#workers-summary"),
}


@pytest.mark.parametrize("where", ["runs", "run", *PHONE_PAGES])
def test_nothing_overflows_a_phone_screen(stepped_pair, browser, where):
    api, moe_id = stepped_pair, stepped_pair.moe
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page = context.new_page()
    try:
        if where == "runs":
            page.goto(f"{api.url}/ui/#/?cols=id,name,status,progress,preset,val_ce,test_ce,"
                      "tokens_per_sec,params,active_params,tags,created")  # fmt: skip
            page.wait_for_selector(f'#runs tr[data-run="{moe_id}"]')
        elif where == "run":
            page.goto(f"{api.url}/ui/#/run/{moe_id}")
            page.wait_for_selector("#experts [data-heatmap][data-drawn]")
            page.wait_for_selector("#verdict")
            page.wait_for_selector('[data-chart="Gradient norm"][data-drawn="1"]')
        else:
            hash_, drawn = PHONE_PAGES[where]
            page.goto(f"{api.url}/ui/{hash_.format(moe=moe_id, dense=stepped_pair.dense)}")
            page.wait_for_selector(drawn)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        if where in ("runs", "run"):
            docs_shot(page, f"dashboard-{where}-390px", full_page=False)
    finally:
        context.close()


def test_dark_mode_follows_the_system(stepped_pair, page):
    api, moe_id = stepped_pair, stepped_pair.moe
    page.emulate_media(color_scheme="dark")
    page.goto(f"{api.url}/ui/#/run/{moe_id}")
    page.wait_for_selector('#curves [data-chart="Cross-entropy"][data-drawn="1"]')
    colours = page.evaluate(
        """() => { const plot = document.querySelector('[data-chart="Cross-entropy"]').plot;
                  return { page: getComputedStyle(document.documentElement).backgroundColor,
                           text: getComputedStyle(document.body).color,
                           axis: plot.axes[0].stroke(plot, 0), series: plot.series[1].stroke(plot, 1) }; }"""
    )
    assert colours == {"page": "rgb(13, 17, 23)", "text": "rgb(230, 237, 243)",
                       "axis": "#e6edf3", "series": "#4493f8"}  # fmt: skip
    page.wait_for_selector('[data-chart="Gradient norm"][data-drawn="1"]')
    page.wait_for_selector('#experts [data-chart$="load imbalance"][data-drawn="1"]')
    # each MoE layer's heatmaps and routing charts: one row of boxes of about one height
    # (the content's height in each box: the grid stretches the boxes themselves to one)
    boxes = page.eval_on_selector(
        "#experts .layer",
        """l => [...l.children].map(b => ({
        top: b.getBoundingClientRect().top,
        height: b.lastElementChild.getBoundingClientRect().bottom - b.getBoundingClientRect().top}))""",
    )
    assert len(boxes) == 4 and len({round(b["top"]) for b in boxes}) == 1
    heights = [b["height"] for b in boxes]
    assert max(heights) / min(heights) < 1.2, heights
    # the busiest cell of the heatmap stands out of the dark page (WCAG contrast ≥ 4.5)
    assert contrast(busiest(page), colours["page"]) >= 4.5
    docs_shot(page, "dashboard-run-dark")
    page.emulate_media(color_scheme="light")  # the colour map follows the theme, no reload
    wait_for(lambda: contrast(busiest(page), "rgb(255, 255, 255)") >= 4.5, timeout=10,
             what="the heatmaps redrawn in the light colour map")  # fmt: skip
    page.reload()
    page.wait_for_selector('#curves [data-chart="Cross-entropy"][data-drawn="1"]')
    assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == (
        "rgb(255, 255, 255)"
    )


def busiest(page) -> str:
    """The colour of the busiest cell of the first layer's heatmaps, as drawn."""
    return page.evaluate("""() => {
        const boxes = [...document.querySelector('#experts .layer').querySelectorAll('[data-heatmap][data-drawn]')];
        const most = (box) => Math.max(...box.drawn.usage.flat().filter(v => v !== null));
        const box = boxes.reduce((a, b) => most(b) > most(a) ? b : a), top = most(box);
        const [r, g, b] = box.colourOf(top).match(/\\d+/g).map(Number);
        const c = box.querySelector('canvas'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;  // the pixels of that colour: it is drawn
        for (let i = 0; i < d.length; i += 4) if (d[i] === r && d[i + 1] === g && d[i + 2] === b) n++;
        return n ? box.colourOf(top) : `not drawn: ${box.colourOf(top)}`; }""")


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two rgb(...) colours, from their relative luminance."""

    def luminance(colour: str) -> float:
        channels = [int(c) / 255 for c in re.findall(r"\d+", colour)[:3]]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    assert "not drawn" not in a, a
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def plotted(chart: dict, label: str) -> tuple[list, list]:
    """One series as drawn: its x and y where it has a value (uPlot joins every series'
    x into one, leaving gaps where a series has no point)."""
    column = chart["data"][1 + chart["labels"].index(label)]
    pairs = [(x, y) for x, y in zip(chart["data"][0], column, strict=True) if y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def seed_running(database: str, *, name: str, worker: str | None = None, gpus: int = 1) -> int:
    """A top2 run on the micro base (on `gpus` ranks), claimed (running) by `worker` (or no
    worker row)."""
    base = base_config("micro", num_epochs=4, gpus=gpus, expert_parallel=gpus)
    with session_scope(database) as session:
        run = catalogue.create_experiment(session=session, name=name, base=base,
                                          config=get_experiment_configs(base)["top2"],
                                          preset="top2", base_preset="micro", tags=["first"])  # fmt: skip
        session.commit()
        run_id = run.id
    claim(database, run_id, f"live-{run_id}", worker_name=worker)
    return run_id


def noisy_points(steps: range, seed: int) -> list[dict]:
    """Step points with a noisy falling loss, 10 steps an epoch; step 5's aux loss is 0 (a
    log scale leaves it out)."""
    rng = random.Random(seed)
    points = []
    for s in steps:
        point = step_point(s, epoch=1 + (s - 1) // 10, loss=3 + 2 * 0.9**s + rng.uniform(-0.2, 0.2))
        point["learning_rate"] = 1e-3 * min(1, s / 5)  # a warm-up
        point["aux_loss"] = 0.0 if s == 5 else 0.01 + rng.uniform(0, 0.01)
        points.append(point)
    return points


def test_step_curves_follow_a_running_run_on_every_axis(deployment, start_api, page):
    settings = deployment()
    database = settings.database_url
    api = start_api(settings)
    run_id = seed_running(database, name="live steps")
    owner = f"live-{run_id}"
    first = record(1, 3.5)
    first["steps"] = 10
    write(database, run_id, owner, first)
    points = noisy_points(range(1, 16), seed=3)
    write_steps(database, run_id, owner, points)

    page.goto(f"{api.url}/ui/#/run/{run_id}")
    page.wait_for_selector(
        '#curves[data-step-points="15"] [data-chart="Learning rate"][data-drawn="1"]'
    )
    settled = "[...document.querySelectorAll('#curves [data-chart]')].every(b => b.dataset.drawn)"
    wait_in_page(page, settled)
    chart = drawn(page, "Cross-entropy")
    assert chart["axis"] == "epoch"
    x, y = plotted(chart, "train CE per step")
    # the fractional epoch: epoch − 1 + the point's place in its epoch of 10 steps
    assert x == pytest.approx([(s - 1) // 10 + ((s - 1) % 10 + 1) / 10 for s in range(1, 16)])
    assert y == pytest.approx([p["ce_loss"] for p in points])
    assert plotted(chart, "val CE")[0] == [1]  # the epoch's own beside it, at its end
    _, lr = plotted(drawn(page, "Learning rate"), "learning rate per step")
    assert lr == pytest.approx([p["learning_rate"] for p in points])
    _, norms = plotted(drawn(page, "Gradient norm"), "grad norm per step")
    assert norms == pytest.approx([p["grad_norm"] for p in points])
    _, speed = plotted(drawn(page, "Tokens per second"), "tokens/s per step")
    assert speed == pytest.approx([p["tokens_per_sec"] for p in points])

    # step, tokens and wall time: each the point's own
    select = "const s = document.querySelector('select[name=x-axis]'); s.value = '{}';" \
             " s.dispatchEvent(new Event('change'))"  # fmt: skip
    for axis, key in (("step", "step"), ("tokens", "tokens"), ("time", "wall_time")):
        redrawn(page, select.format(axis))
        chart = drawn(page, "Loss (CE + aux)")
        x, y = plotted(chart, "train loss per step")
        assert chart["axis"] == axis and x == pytest.approx([p[key] for p in points])
        assert y == pytest.approx([p["loss"] for p in points])
    redrawn(page, select.format("step"))

    # smoothing: the step series' debiased EMA, its raw values beside it
    slider = "const r = document.querySelector('input[name=smoothing]'); r.value = '0.6';" \
             " r.dispatchEvent(new Event('input'))"  # fmt: skip
    redrawn(page, slider)
    chart = drawn(page, "Cross-entropy")
    ce = [p["ce_loss"] for p in points]
    assert plotted(chart, "train CE per step")[1] == pytest.approx(ema(ce, 0.6))
    assert plotted(chart, "train CE per step (raw)")[1] == pytest.approx(ce)
    # the epoch's own figure as logged, no raw line beside it
    assert plotted(chart, "val CE")[1] == pytest.approx([first["val"]["ce_loss"]])
    assert "val CE (raw)" not in chart["labels"]
    docs_shot(page, "dashboard-run-smoothed", full_page=False)
    redrawn(page, slider.replace("0.6", "0"))

    # log y: a logarithmic scale, and the aux loss of 0 left out
    redrawn(page, "const c = document.querySelector('input[name=log-y]'); c.checked = true;"
                  " c.dispatchEvent(new Event('change'))")  # fmt: skip
    chart = drawn(page, "Auxiliary loss")
    x, y = plotted(chart, "train aux per step")
    assert chart["distr"] == 3 and 5 not in x and len(x) == 14
    redrawn(page, "const c = document.querySelector('input[name=log-y]'); c.checked = false;"
                  " c.dispatchEvent(new Event('change'))")  # fmt: skip
    assert 5 in plotted(drawn(page, "Auxiliary loss"), "train aux per step")[0]

    # live: points the worker writes now reach the charts on the run's stream, no reload;
    # a zoom and a hidden series stay as they were though the charts are built anew
    page.evaluate("document.querySelector('#view').dataset.loaded = 'once'")
    page.evaluate(
        "document.querySelector('[data-chart=\"Gradient norm\"]').plot.setScale('x', {min: 3, max: 12})"
    )
    page.locator('[data-chart="Cross-entropy"] .u-legend .u-series').nth(1).click()
    hidden = drawn(page, "Cross-entropy")["shown"]
    assert hidden.count(False) == 1
    more = noisy_points(range(16, 31), seed=4)
    write_steps(database, run_id, owner, more)
    wait_in_page(page, "document.querySelector('#curves').dataset.stepPoints === '30'")
    wait_in_page(page, settled)
    x, norms = plotted(drawn(page, "Gradient norm"), "grad norm per step")
    assert x == list(range(1, 31))
    assert norms == pytest.approx([p["grad_norm"] for p in points + more])
    assert page.evaluate("document.querySelector('#view').dataset.loaded") == "once"  # no reload
    scale = "(() => { const s = document.querySelector('[data-chart=\"Gradient norm\"]').plot.scales.x;" \
            " return [s.min, s.max]; })()"  # fmt: skip
    assert page.evaluate(scale) == [3, 12]
    assert drawn(page, "Cross-entropy")["shown"] == hidden
    page.locator('[data-chart="Gradient norm"] button[data-action=reset]').click()
    assert page.evaluate(scale) == [1, 30]
    page.locator('[data-chart="Cross-entropy"] .u-legend .u-series').nth(1).click()
    assert all(drawn(page, "Cross-entropy")["shown"])
    docs_shot(page, "dashboard-run-steps", full_page=False)


@pytest.mark.console_allows("status of 422")  # the refused tag
def test_tags_and_note_are_edited_in_the_header(deployment, start_api, page):
    settings = deployment()
    api = start_api(settings)
    run_id = seed_running(settings.database_url, name="labelled")
    page.goto(f"{api.url}/ui/#/run/{run_id}")
    page.wait_for_selector('#labels [data-tag="first"]')

    page.fill("#labels textarea[name=note]", "lr too high? compare with #12")
    page.click("#note-form button[type=submit]")
    page.fill("#labels input[name=tag]", "ablation")
    page.click("#tag-form button[type=submit]")
    page.wait_for_selector('#labels [data-tag="ablation"]')
    page.click('#labels [data-tag="first"] button')
    wait_in_page(page, "!document.querySelector('#labels [data-tag=\"first\"]')")
    note = wait_for(lambda: httpx.get(f"{api.url}/experiments/{run_id}").json()["note"], timeout=10)
    assert note == "lr too high? compare with #12"
    assert httpx.get(f"{api.url}/experiments/{run_id}").json()["tags"] == ["ablation"]

    # a tag the API refuses: its message, as the API words it, and nothing changed
    refused = httpx.patch(f"{api.url}/experiments/{run_id}", json={"tags": {"add": ["no spaces"]}})
    assert refused.status_code == 422
    message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                        for e in refused.json()["detail"])  # fmt: skip
    page.fill("#labels input[name=tag]", "no spaces")
    page.click("#tag-form button[type=submit]")
    wait_in_page(page, "document.querySelector('#labels-error').textContent !== ''")
    assert page.inner_text("#labels-error") == message
    assert httpx.get(f"{api.url}/experiments/{run_id}").json()["tags"] == ["ablation"]

    # a cleared note is null again
    page.fill("#labels textarea[name=note]", "")
    page.click("#note-form button[type=submit]")
    wait_in_page(page, "document.querySelector('#labels-error').textContent === ''")
    wait_for(
        lambda: httpx.get(f"{api.url}/experiments/{run_id}").json()["note"] is None, timeout=10
    )


def test_a_run_on_a_gpu_shows_its_reading_and_one_on_a_cpu_none(deployment, start_api, page):
    # A worker is live while its heartbeat is younger than heartbeat_timeout: 3 s in the
    # tests' deployment, which a busy machine outlasts between seeding and reading the page.
    # The window is an hour here and the heartbeats a minute old, whatever the machine's pace.
    settings = deployment(heartbeat_timeout=3600.0)
    database = settings.database_url
    reading = {"gpu_name": "NVIDIA H200", "gpu_utilization": 87.0,
               "gpu_memory_used": 40 * 2**30, "gpu_memory_total": 140 * 2**30,
               "gpu_power_watts": 412.0, "gpu_read_at": datetime.now(UTC)}  # fmt: skip
    with session_scope(database) as session:
        workers.register(session=session, name="gpu0@node", host="node", pid=7, device="cuda:0")
        workers.register(session=session, name="cpu0@node", host="node", pid=8, device="cpu")
        workers.register(session=session, name="pair@node", host="node", pid=9, device="cuda",
                         slots=2, gpus=2)  # fmt: skip
    on_gpu = seed_running(database, name="on a gpu", worker="gpu0@node")
    on_cpu = seed_running(database, name="on a cpu", worker="cpu0@node")
    on_two = seed_running(database, name="on two gpus", worker="pair@node", gpus=2)
    with session_scope(database) as session:
        assert workers.beat(session=session, name="gpu0@node", gpu=reading)
        assert workers.beat(session=session, name="cpu0@node")
        assert workers.beat(session=session, name="pair@node")
        session.execute(
            update(Worker).values(heartbeat_at=datetime.now(UTC) - timedelta(minutes=1))
        )
        session.commit()
    api = start_api(settings)

    page.goto(f"{api.url}/ui/#/run/{on_gpu}")
    page.wait_for_selector("#gpu")
    assert page.inner_text("#gpu").split("\n")[-1] == "NVIDIA H200 · 87% · 40.0 / 140.0 GiB · 412 W"
    page.goto(f"{api.url}/ui/#/run/{on_cpu}")
    page.wait_for_selector('h1:has-text("on a cpu")')
    page.wait_for_selector("#labels")
    assert page.locator("#gpu").count() == 0
    assert "tokens/s" in page.inner_text(".summary")

    # the workers page: each live worker, what it trains, and its GPU (none on the CPU one)
    page.goto(f"{api.url}/ui/#/workers")
    page.wait_for_selector("#workers[data-loaded]")
    cells = page.eval_on_selector_all(
        "#workers tbody tr",
        "rows => Object.fromEntries(rows.map(r => [r.dataset.worker,"
        " [...r.cells].map(c => c.innerText.trim())]))",
    )
    heads = page.eval_on_selector_all("#workers thead th", "hs => hs.map(h => h.innerText.trim())")
    gpu, cpu, pair = (dict(zip(heads, cells[name], strict=True))
                      for name in ("gpu0@node", "cpu0@node", "pair@node"))  # fmt: skip
    # a run on two GPUs holds both of its worker's, though one of its two pool slots trains
    assert (pair["state"], pair["slots"], pair["GPUs"]) == ("busy", "1/2", f"2/2: #{on_two} ×2")
    assert gpu["GPUs"] == "1/1"
    assert (gpu["device"], gpu["state"], gpu["slots"], gpu["runs"]) == (
        "cuda:0",
        "busy",
        "1/1",
        f"#{on_gpu}",
    )
    assert (gpu["GPU"], gpu["utilization"], gpu["memory"], gpu["power"]) == (
        "NVIDIA H200",
        "87%",
        "40.0 / 140.0 GiB",
        "412 W",
    )
    assert (cpu["device"], cpu["runs"], cpu["GPU"], cpu["utilization"], cpu["memory"]) == (
        "cpu",
        f"#{on_cpu}",
        "–",
        "–",
        "–",
    )
    assert (
        page.inner_text("#workers-summary")
        == "3 live workers, 3 of 4 slots training, 4 of 4 GPUs held"
    )
    docs_shot(page, "dashboard-workers", full_page=False)
    page.click(f'#workers a[href="#/run/{on_gpu}"]')
    page.wait_for_selector("#gpu")


def test_compare_draws_no_delta_against_a_dense_run_of_another_base(deployment, start_api, page):
    from moe_core.comparable import COMPARABLE_FIELDS

    settings = deployment()
    dense_id, moe_id = seed_pair(settings.database_url)
    tiny = base_config("tiny", num_epochs=EPOCHS)
    with session_scope(settings.database_url) as session:
        other = catalogue.create_experiment(session=session, name="tiny-top2", base=tiny,
                                            config=get_experiment_configs(tiny)["top2"],
                                            preset="top2", base_preset="tiny").id  # fmt: skip
        session.commit()
    finish(settings.database_url, other, noisy_epochs(3), result(2.9))
    api = start_api(settings)
    page.goto(f"{api.url}/ui/#/compare?ids={dense_id},{moe_id},{other}")
    page.wait_for_selector("#compare tbody tr")
    cells = page.eval_on_selector_all(
        "#compare tbody tr",
        "rows => rows.map(r => [r.dataset.run, ...[...r.cells].map(c => c.innerText)])",
    )
    by_run = {int(row[0]): row[1:] for row in cells}
    assert by_run[moe_id][-2:] == ["-0.1000", str(dense_id)]
    assert by_run[other][-2:] == ["–", f"{dense_id}: another base"]
    # the page's list is the engine's
    listed = page.evaluate("import('./compare.js').then(m => m.COMPARABLE_FIELDS)")
    assert listed == list(COMPARABLE_FIELDS)
