"""`moe-lab sweep submit | show | ls | cancel | delete`: a design space searched as one call
(POST /sweeps and its reads)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from moe_lab import render
from moe_lab.app import (
    JsonOption,
    MineOption,
    OwnerOption,
    api,
    handled,
    owner_filter,
    print_json,
    sweep_app,
)
from moe_lab.bodies import load_body
from moe_lab.completion import SweepId


@sweep_app.command("submit")
@handled
def sweep_submit(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the sweep as YAML or JSON (docs/sweeps.md)")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="check and size it; store nothing")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="wait for it to end, then rank")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Submit a sweep (POST /sweeps): checked whole before anything is stored."""
    body = load_body(file)
    client = api(ctx)
    out = render.console()
    sweep = client.create_sweep(body, dry_run=dry_run)
    if dry_run:
        if as_json:
            print_json(sweep)
        else:
            grid = f", a grid of {sweep['grid_points']} points" if sweep["grid_points"] else ""
            out.print(
                f"{sweep['trials']} trials{grid}: {sweep['runs']} runs (at most {sweep['max_runs']})"
            )
        return
    if not wait:
        if as_json:
            print_json(sweep)
        else:
            out.print(
                f"submitted sweep {sweep['id']} {sweep['name']!r}; follow it: moe-lab sweep show {sweep['id']}"
            )
        return
    while sweep["status"] == "running":
        time.sleep(2)
        sweep = client.sweep(sweep["id"])
    if as_json:
        print_json(sweep)
    else:
        print_sweep(out, sweep)
    raise typer.Exit(0 if sweep["status"] == "finished" else 1)


@sweep_app.command("show")
@handled
def sweep_show(ctx: typer.Context, sweep_id: SweepId, as_json: JsonOption = False) -> None:
    """A sweep's trials, best first, with each objective ± SE and its verdict."""
    sweep = api(ctx).sweep(sweep_id)
    if as_json:
        print_json(sweep)
    else:
        print_sweep(render.console(), sweep)


@sweep_app.command("ls")
@handled
def sweep_list(
    ctx: typer.Context,
    mine: MineOption = False,
    owner: OwnerOption = None,
    as_json: JsonOption = False,
) -> None:
    """Sweeps, newest first."""
    sweeps = api(ctx).list_sweeps(owner=owner_filter(mine, owner))
    if as_json:
        print_json(sweeps)
        return
    rows = render.table("id", "name", "owner", "status", "trials", "best",
                        right=("id", "trials", "best"))  # fmt: skip
    for s in sweeps["items"]:
        rows.add_row(str(s["id"]), s["name"], s.get("owner") or "", s["status"],
                     f"{len(s['trials'])}/{s.get('budget') or len(s['trials'])}",
                     "" if s["best_trial"] is None else str(s["best_trial"]))  # fmt: skip
    render.console().print(rows)


@sweep_app.command("cancel")
@handled
def sweep_cancel(ctx: typer.Context, sweep_id: SweepId, as_json: JsonOption = False) -> None:
    """Cancel a sweep: no more trials; its queued runs end, its running ones stop."""
    sweep = api(ctx).cancel_sweep(sweep_id)
    if as_json:
        print_json(sweep)
    else:
        render.console().print(f"sweep {sweep['id']}: {sweep['status']}")


@sweep_app.command("delete")
@handled
def sweep_delete(
    ctx: typer.Context,
    sweep_id: SweepId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Delete a sweep that has ended, with its trials and all its runs."""
    client = api(ctx)
    if not yes:
        sweep = client.sweep(sweep_id)
        runs = len(sweep["dense_run_ids"]) + sum(len(t["run_ids"]) for t in sweep["trials"])
        typer.confirm(f"delete sweep {sweep_id} {sweep['name']!r} and its {runs} runs?", abort=True)
    client.delete_sweep(sweep_id)
    render.console().print(f"deleted sweep {sweep_id}")


def ranked(sweep: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The trials that can be best, best first; then those with an objective that cannot
    (a collapsed router), by their objective; then the rest in the order proposed."""
    by_number = {t["number"]: t for t in sweep["trials"]}
    first = [by_number[n] for n in sweep["ranking"]]
    rest = [t for t in sweep["trials"] if t["number"] not in sweep["ranking"]]
    judged = sorted((t for t in rest if (t["objective"] or {}).get("mean") is not None),
                    key=lambda t: t["objective"]["mean"])  # fmt: skip
    return first + judged + [t for t in rest if t not in judged]


def trial_count(sweep: Mapping[str, Any]) -> str:
    """ "2 of 3 trials (1 complete, 1 running)": proposed of the budget, by state."""
    trials = sweep["trials"]
    states = Counter(t["state"].replace("_", " ") for t in trials)
    by_state = ", ".join(f"{n} {state}" for state, n in states.items())
    budget = sweep.get("budget") or len(trials)
    return f"{len(trials)} of {budget} trials" + (f" ({by_state})" if by_state else "")


def print_sweep(out: Any, sweep: Mapping[str, Any]) -> None:
    config = sweep["config"]
    out.print(f"sweep {sweep['id']} {sweep['name']!r}: {sweep['status']}, {config['method']}, "
              f"{trial_count(sweep)} x {config['seeds']} seed(s), objective "
              f"{config['objective']}; dense runs {', '.join(map(str, sweep['dense_run_ids']))}"
              + render.owned_by(sweep))  # fmt: skip
    rows = render.table("#", "state", "objective ± SE", "95% CI", "p", "verdict", "params", "runs",
                        right=("#", "objective ± SE", "p"), wrap=("params",))  # fmt: skip
    for t in ranked(sweep):
        o = t["objective"] or {}
        value = render.signed(o.get("mean"), ".4f")
        if value and o.get("se") is not None:
            value += f" ± {o['se']:.4f}"
        state = t["state"] + (f" (epoch {t['pruned_at_epoch']})" if t["state"] == "pruned" else "")
        params = ", ".join(f"{k}={render.num(v, '.3g') if isinstance(v, float) else v}"
                           for k, v in t["params"].items())  # fmt: skip
        rows.add_row(str(t["number"]), state, value, render.interval(o.get("ci_low"), o.get("ci_high")),
                     render.p_value(o.get("p_value")), render.mark(t["passed"]) if t["state"] in
                     ("complete", "tertiary_failed") else "", params, ", ".join(map(str, t["run_ids"])))  # fmt: skip
    out.print(rows)
    if sweep["best_trial"] is not None:
        out.print(
            f"best: trial {sweep['best_trial']} (a trial whose router collapsed is never best)"
        )
    if sweep.get("no_best"):
        out.print(sweep["no_best"])
    if sweep.get("importance"):
        shares = ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(sweep["importance"].items(), key=lambda kv: -kv[1])
        )
        out.print(f"importance (fANOVA): {shares}")
