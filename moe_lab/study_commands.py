"""`moe-lab study submit | show | ls | download | delete`: the spec's main() as one call
(POST /studies and its reads)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from moe_core.presets import EXPERIMENT_PRESETS, SPEC_EXPERIMENTS
from moe_lab import render
from moe_lab.app import (
    BASE_PRESETS_HELP,
    JsonOption,
    MineOption,
    OwnerOption,
    api,
    handled,
    owner_filter,
    print_json,
    study_app,
)
from moe_lab.bodies import apply_sets, check_json, split_list
from moe_lab.completion import StudyId, base_presets, preset_list
from moe_lab.experiment_commands import fetch_artifact, gib, print_plan, wait_quietly
from moe_lab.follow import Follower


@study_app.command("submit")
@handled
def study_submit(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the study's name")],
    base_preset: Annotated[
        str | None,
        typer.Option("--base-preset", "-b", help=BASE_PRESETS_HELP, autocompletion=base_presets),
    ] = None,
    experiments: Annotated[
        list[str] | None,
        typer.Option(
            "--experiments",
            "-e",
            help=f"presets, comma-separated or repeated, of {', '.join(EXPERIMENT_PRESETS)} "
            f"(default: the spec's four, {', '.join(SPEC_EXPERIMENTS)})",
            autocompletion=preset_list,
        ),
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="run everything once per seed (1-10)")] = None,
    seeds_together: Annotated[
        bool | None,
        typer.Option(
            "--seeds-together/--seeds-apart",
            help="train each configuration's seeds as one stacked model on one GPU "
            "(base.seeds_together; default: where the stack fits a GPU)",
        ),
    ] = None,  # fmt: skip
    sets: Annotated[
        list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="base.FIELD=VALUE")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="check and size it; store and queue nothing")
    ] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="the same key never makes a second study"),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="follow every run to its end")] = False,
    as_json: JsonOption = False,
) -> None:
    """Submit a study: a dense baseline and one run per preset, per seed (POST /studies)."""
    body: dict[str, Any] = {"name": name}
    if base_preset:
        body["base_preset"] = base_preset
    if experiments:
        body["experiments"] = split_list(experiments)
    if seeds is not None:
        body["seeds"] = seeds
    if seeds_together is not None:
        body["base"] = {"seeds_together": seeds_together}
    apply_sets(body, sets or [], ("base",))
    check_json(body)
    client = api(ctx)
    out = render.console()
    study = client.create_study(body, dry_run=dry_run, idempotency_key=idempotency_key)
    if dry_run:
        if as_json:
            print_json(study)
            return
        print_study_plan(out, study, base_preset)
        return
    if as_json and not wait:
        print_json(study)
        return
    if not as_json:
        members = ", ".join(f"{m['name']} {m['id']}" for m in study["members"])
        out.print(f"submitted study {study['id']} {study['name']!r}: {members}")
        for line in render.smoke_note([study.get("base_preset")]):
            out.print(line)
    if not wait:
        out.print(f"follow it: moe-lab study show {study['id']}")
        return
    follower = Follower(client, out)
    for member in sorted(study["members"], key=lambda m: m["id"]):
        if as_json:
            wait_quietly(client, member["id"])
            continue
        out.rule(f"{member['name']} (experiment {member['id']})")
        follower.follow(client.experiment(member["id"]), show_verdict=False)
    study = client.study(study["id"])
    if as_json:
        print_json(study)
    else:
        out.rule()
        print_study(out, study)
    raise typer.Exit(0 if study["status"] == "succeeded" else 1)


def print_study_plan(out: Any, study: Mapping[str, Any], base_preset: str | None) -> None:
    """A study's dry run: each run it would train, labelled, then what they add up to
    over the seeds (the API plans one seed: the others differ only in their seed)."""
    plans, seeds = study["runs"], study["seeds"]
    each_seed = f"once per seed ({', '.join(map(str, seeds))})" if len(seeds) > 1 else (
        f"seed {seeds[0]}")  # fmt: skip
    out.print("dry run: nothing stored or queued (--json for the resolved configs)")
    for number, plan in enumerate(plans, 1):
        name = plan["config"].get("name") or ("dense" if plan["dense"] else "?")
        what = "the dense baseline" if plan["dense"] else f"preset {name}"
        out.print(f"\nrun {number} of {len(plans)}: {what}, {each_seed}")
        print_plan(out, plan, header=False)
    runs = len(plans) * len(seeds)
    steps = [p["steps_per_epoch"] * p["num_epochs"] for p in plans if p.get("steps_per_epoch")]
    tokens = [p["tokens_per_epoch"] * p["num_epochs"] for p in plans if p.get("tokens_per_epoch")]
    known = len(steps) == len(plans)  # without a token cap, the corpus decides
    peak = max((p.get("gpu_memory") or {}).get("total") or 0 for p in plans)
    out.print(
        f"\ntotal: {runs} runs ({len(plans)} runs x {len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
        + (f", {sum(steps) * len(seeds):,} optimizer steps, {sum(tokens) * len(seeds):,} "
           "tokens trained on" if known else ", steps: the corpus decides")
        + f"; the largest run needs {gib(peak)} of GPU memory (estimated peak)"
    )  # fmt: skip
    for line in render.smoke_note([base_preset]):
        out.print(line)


def print_study(out: Any, study: Mapping[str, Any]) -> None:
    out.print(
        f"study {study['id']} {study['name']!r}: {study['status']}, base "
        f"{study.get('base_preset') or 'custom'}, {study['seeds']} seed(s), "
        f"dense runs {', '.join(map(str, study['dense_ids']))}" + render.owned_by(study)
    )
    errors = any(m.get("error") for m in study["members"])
    members = render.table(
        "id", "name", "seed", "status", "epoch", "best val CE", *(["error"] if errors else []),
        right=("id", "seed", "epoch", "best val CE"), wrap=("error",),
    )  # fmt: skip
    for m in study["members"]:
        members.add_row(
            str(m["id"]), m["name"], str(m["seed"]), m["status"],
            f"{m['current_epoch']}/{m['num_epochs']}", render.num(m.get("best_val_ce_loss"), ".4f"),
            *([m.get("error") or ""] if errors else []),
        )  # fmt: skip
    out.print(members)
    rows = study["preset_verdicts"]
    waiting = any(row.get("detail") for row in rows)
    tests = [d for row in rows for d in (row.get("val_loss_delta"), row.get("gap_delta")) if d]
    # the API says at what level it tests (moe_core.statistics.CONFIDENCE)
    confidence = next((d["confidence"] for d in tests if d.get("confidence")), None)
    ci = "CI" if confidence is None else f"{100 * confidence:g}% CI"
    columns = ["preset", "passed", "primary", "tertiary", "Δ val CE", ci, "p", "Δ gap", ci, "p",
               "significant"]  # fmt: skip
    verdicts = render.table(
        *columns, *(["waiting for"] if waiting else []),
        title="verdicts against dense, paired by seed", right=("Δ val CE", "Δ gap", ci, "p"),
        wrap=("waiting for",),
    )  # fmt: skip
    one_seed = "unknown (1 seed)" if study["seeds"] == 1 else ""
    for row in rows:
        judged = row["detail"] is None
        significant = {True: "yes", False: "no", None: one_seed}[row.get("significant")]
        if row.get("significance_of") == "gap_delta":
            significant += " (gap)"
        cells = [
            row["preset"],
            render.mark(row["passed"]) if judged else "",
            render.mark(row["primary_passed"]) if judged else "",
            render.mark(row["tertiary_passed"]) if judged else "",
            *delta_cells(row.get("val_loss_delta")),
            *delta_cells(row.get("gap_delta")),
            significant if judged else "",
        ]
        verdicts.add_row(*cells, *([row.get("detail") or ""] if waiting else []))
    out.print(verdicts)
    for line in render.smoke_note([study.get("base_preset")]):
        out.print(line)
    if confidence is not None and any(d.get("p_value") is not None for d in tests):
        alpha = f"{1 - confidence:.2g}"
        out.print(
            f"Δ: mean ± standard error over the seeds, each run paired with its seed's dense run; "
            f"{ci}: Δ ± t·SE, Student's t with n - 1 df; p: two-sided paired t-test. significant: "
            f"the deciding difference (Δ val CE; Δ gap where primary passes on the gap alone, "
            f"marked (gap)) has p < {alpha}, its interval excludes 0."
        )


def delta_cells(delta: Mapping[str, Any] | None) -> list[str]:
    """A paired difference as three cells: mean ± SE, its confidence interval, its p-value."""
    if not delta or delta.get("mean") is None:
        return ["", "", ""]
    text = render.signed(delta["mean"], ".4f")
    text += f" ± {delta['se']:.4f}" if delta.get("se") is not None else ""
    # one seed: no standard error, so neither an interval nor a p-value (empty cells)
    interval = render.interval(delta.get("ci_low"), delta.get("ci_high"))
    return [text, interval, render.p_value(delta.get("p_value"))]


@study_app.command("show")
@handled
def study_show(
    ctx: typer.Context,
    study_id: StudyId,
    as_json: JsonOption = False,
) -> None:
    """A study's members and its verdict per preset."""
    study = api(ctx).study(study_id)
    if as_json:
        print_json(study)
        return
    print_study(render.console(), study)


@study_app.command("ls")
@handled
def study_ls(
    ctx: typer.Context,
    mine: MineOption = False,
    owner: OwnerOption = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List studies (GET /studies)."""
    page = api(ctx).list_studies(owner=owner_filter(mine, owner), limit=limit)
    if as_json:
        print_json(page)
        return
    grid = render.table(
        "id", "name", "owner", "status", "seeds", "runs", "created", right=("id", "seeds", "runs")
    )
    for study in page["items"]:
        grid.add_row(
            str(study["id"]), study["name"], study.get("owner") or "", study["status"],
            str(study["seeds"]),
            str(len(study["member_ids"])), render.when(study.get("created_at")),
        )  # fmt: skip
    render.console().print(grid)


@study_app.command("download")
@handled
def study_download(
    ctx: typer.Context,
    study_id: StudyId,
    name: Annotated[str | None, typer.Argument(help="the artifact (none: list them)")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="the folder to write to")] = Path(
        "."
    ),
    as_json: JsonOption = False,
) -> None:
    """List a study's artifacts, or download one (dense_model.pt, experiment_results.json)."""
    client = api(ctx)
    fetch_artifact(
        listing=lambda: client.study_artifacts(study_id),
        fetch=lambda name, dest: client.download_study(study_id, name, dest),
        name=name,
        output=output,
        as_json=as_json,
    )


@study_app.command("delete")
@handled
def study_delete(
    ctx: typer.Context,
    study_id: StudyId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Delete a study and all its runs."""
    client = api(ctx)
    if not yes:
        study = client.study(study_id)
        typer.confirm(
            f"delete study {study_id} {study['name']!r} and its {len(study['members'])} runs?",
            abort=True,
        )
    client.delete_study(study_id)
    render.console().print(f"deleted study {study_id}")
