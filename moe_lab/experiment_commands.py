"""`moe-lab submit | watch | ls | show | metrics | compare | verdict | cancel | logs |
download | delete`: one experiment at a time (POST /experiments and its reads); `tag` and
`note` are moe_lab/label_commands.py."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from moe_core.presets import EXPERIMENT_PRESETS
from moe_lab import compare_render, render
from moe_lab.app import (
    BASE_PRESETS_HELP,
    CsvOption,
    JsonOption,
    MineOption,
    OwnerOption,
    UsageProblem,
    api,
    app,
    handled,
    one_output,
    owner_filter,
    print_csv,
    print_json,
)
from moe_lab.bodies import apply_sets, check_json, load_body
from moe_lab.client import FINISHED, ApiError, Client
from moe_lab.completion import RunId, base_presets, presets, run_ids, study_ids
from moe_lab.follow import Follower


@app.command()
@handled
def submit(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="the run's name (else the file's)")] = None,
    preset: Annotated[
        str | None,
        typer.Option("--preset", "-p", help=" | ".join(EXPERIMENT_PRESETS), autocompletion=presets),
    ] = None,
    base_preset: Annotated[
        str | None,
        typer.Option("--base-preset", "-b", help=BASE_PRESETS_HELP, autocompletion=base_presets),
    ] = None,
    dense: Annotated[bool, typer.Option("--dense", help="a dense baseline run")] = False,
    baseline: Annotated[
        int | None,
        typer.Option(
            "--baseline", help="the dense run to judge this one against", autocompletion=run_ids
        ),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", metavar="KEY=VALUE", help="config.FIELD=VALUE or base.FIELD=VALUE"
        ),
    ] = None,
    tags: Annotated[list[str] | None, typer.Option("--tag", "-t", help="a tag (repeat)")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="a JSON or YAML request body; flags override it"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="check and size it; store and queue nothing")
    ] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="the same key never makes a second run"),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="follow the run to its end")] = False,
    as_json: JsonOption = False,
) -> None:
    """Submit an experiment (POST /experiments)."""
    body = load_body(file) if file else {}
    if name:
        body["name"] = name
    if preset:
        body["preset"] = preset
    if base_preset:
        body["base_preset"] = base_preset
    if dense:
        body["dense"] = True
    if baseline is not None:
        body["baseline_id"] = baseline
    if tags:
        body["tags"] = tags
    apply_sets(body, sets or [], ("config", "base"))
    if not body.get("name"):
        raise UsageProblem("give the run a NAME (or a file with a name)")
    check_json(body)
    client = api(ctx)
    out = render.console()
    answer = client.create_experiment(body, dry_run=dry_run, idempotency_key=idempotency_key)
    if dry_run:
        if as_json:
            print_json(answer)
        else:
            print_plan(out, answer)
        return
    if as_json and not wait:
        print_json(answer)
        return
    if not as_json:
        out.print(
            f"submitted experiment {answer['id']} {answer['name']!r}: {render.kind(answer)}"
            f" on {answer.get('base_preset') or 'its base'}, {answer['num_epochs']} epochs"
            f" ({answer['status']})"
        )
    if not wait:
        out.print(f"follow it: moe-lab watch {answer['id']}")
        return
    if as_json:
        final = wait_quietly(client, answer["id"])
        print_json(final)
    else:
        final = Follower(client, out).follow(answer)
    raise typer.Exit(0 if final["status"] == "succeeded" else 1)


def print_plan(out: Any, plan: Mapping[str, Any], *, header: bool = True) -> None:
    grid = render.table("", "")
    grid.show_header = False
    config = plan["config"]
    rows = [
        ("kind", "dense" if plan["dense"] else f"MoE, top-{config.get('top_k')} of "
         f"{plan['base'].get('num_experts')} experts at layers {plan['base'].get('moe_layers')}"),
        ("params", f"{plan['params']:,} ({plan['active_params']:,} active per token)"),
        ("epochs", str(plan["num_epochs"])),
        ("steps per epoch", render.num(plan.get("steps_per_epoch"), "d") or "the corpus decides"),
        ("tokens per epoch", render.num(plan.get("tokens_per_epoch"), ",d") or "the corpus decides"),
        ("batch", f"{config.get('batch_size')} x {plan['base'].get('seq_len')} tokens"),
        ("learning rate", str(plan["base"].get("learning_rate", ""))),
        ("GPU memory", gib((plan.get("gpu_memory") or {}).get("total"))
         + f" estimated peak{' per GPU' if plan['base'].get('gpus', 1) > 1 else ''}"),
    ]  # fmt: skip
    for label, text in rows:
        grid.add_row(label, text)
    if header:
        out.print("dry run: nothing stored or queued (--json for the resolved config)")
    out.print(grid)


def gib(n: int | None) -> str:
    """Bytes of GPU memory: `9.4 MiB`, `1.25 GiB`."""
    if n is None:
        return "?"
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def wait_quietly(client: Client, experiment_id: int) -> dict:
    for _ in client.events(experiment_id):
        pass
    return client.experiment(experiment_id)


@app.command()
@handled
def watch(ctx: typer.Context, experiment_id: RunId) -> None:
    """Follow a run to its end: progress, each epoch's losses, the outcome and verdict."""
    client = api(ctx)
    run = client.experiment(experiment_id)
    final = Follower(client, render.console()).follow(run)
    raise typer.Exit(0 if final["status"] == "succeeded" else 1)


@app.command("ls")
@handled
def list_experiments(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="queued | running | succeeded | failed | cancelled")
    ] = None,
    name: Annotated[str | None, typer.Option(help="a part of the name (any case)")] = None,
    tag: Annotated[str | None, typer.Option(help="runs with this tag")] = None,
    study: Annotated[
        int | None, typer.Option(help="the members of this study", autocompletion=study_ids)
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="runs of this preset", autocompletion=presets)
    ] = None,
    dense: Annotated[
        bool | None, typer.Option("--dense/--moe", help="only dense runs, or only MoE runs")
    ] = None,
    order: Annotated[
        str | None, typer.Option(help="newest (default) | val_ce (best validation CE first)")
    ] = None,
    mine: MineOption = False,
    owner: OwnerOption = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List experiments (GET /experiments)."""
    page = api(ctx).list_experiments(
        status=status, name=name, tag=tag, study_id=study, preset=preset, dense=dense,
        owner=owner_filter(mine, owner), order=order, limit=limit,
    )  # fmt: skip
    if as_json:
        print_json(page)
        return
    out = render.console()
    grid = render.table(
        "id", "name", "owner", "preset", "status", "epoch", "best val CE", "tags", "created",
        right=("id", "epoch", "best val CE"),
    )  # fmt: skip
    for run in page["items"]:
        grid.add_row(
            str(run["id"]),
            run["name"],
            run.get("owner") or "",
            render.kind(run),
            run["status"],
            f"{run['current_epoch']}/{run['num_epochs']}",
            render.num(run.get("best_val_ce_loss"), ".4f"),
            ",".join(run.get("tags") or []),
            render.when(run.get("created_at")),
        )
    out.print(grid)
    if page["total"] > len(page["items"]):
        out.print(f"{len(page['items'])} of {page['total']} (--limit for more)")


@app.command()
@handled
def show(
    ctx: typer.Context,
    experiment_id: RunId,
    as_json: JsonOption = False,
) -> None:
    """An experiment's key fields, its hyper-parameters and, while it runs, where it is."""
    run = api(ctx).experiment(experiment_id)
    if as_json:
        print_json(run)
        return
    out = render.console()
    grid = render.table("", "", title=f"experiment {run['id']}")
    grid.show_header = False
    for label, text in render.experiment_summary(run):
        grid.add_row(label, text)
    if run["status"] == "running" and run.get("progress"):
        grid.add_row("progress", render.progress_line(run["progress"], run["num_epochs"]))
    if run.get("gpu"):
        grid.add_row("GPU", render.gpu_line(run["gpu"]))
    out.print(grid)
    out.print(compare_render.hyperparameters_table(run))


@app.command()
@handled
def metrics(
    ctx: typer.Context,
    experiment_id: RunId,
    as_csv: CsvOption = False,
    as_json: JsonOption = False,
    steps: Annotated[
        bool,
        typer.Option("--steps", help="the step points (every K steps) instead of the epochs"),
    ] = False,
) -> None:
    """Per-epoch metrics: losses, throughput and the last MoE layer's routing (--steps:
    the step points, every K steps: loss, CE, aux, learning rate, gradient norm, tokens/s)."""
    one_output(csv=as_csv, json=as_json)
    if steps:
        _step_metrics(ctx, experiment_id, as_csv=as_csv, as_json=as_json)
        return
    answer = api(ctx).metrics(experiment_id)
    if as_json:
        print_json(answer)
        return
    rows = render.metrics_rows(answer["epochs"])
    if as_csv:
        print_csv(rows, render.METRICS_COLUMNS)
        return
    out = render.console()
    out.print(render.metrics_table(rows, title=f"experiment {experiment_id} ({answer['status']})"))


def _step_metrics(ctx: typer.Context, experiment_id: int, *, as_csv: bool, as_json: bool) -> None:
    answer = api(ctx).steps(experiment_id)
    if as_json:
        print_json(answer)
        return
    if as_csv:
        print_csv(answer["points"], render.STEPS_COLUMNS)
        return
    every = {None: "no points yet", 1: "a point every step"}.get(
        answer["every"], f"a point every {answer['every']} steps"
    )
    title = f"experiment {experiment_id}: {every}"
    render.console().print(render.steps_table(answer["points"], title=title))


@app.command()
@handled
def compare(
    ctx: typer.Context,
    experiment_ids: Annotated[
        list[int], typer.Argument(metavar="ID...", help="runs to compare", autocompletion=run_ids)
    ],
    as_csv: CsvOption = False,
    as_json: JsonOption = False,
) -> None:
    """Runs side by side: status, validation CE, perplexity, speed, routing and Δ against
    dense (* while a run is unfinished), then the hyper-parameters in which they differ."""
    one_output(csv=as_csv, json=as_json)
    client = api(ctx)
    runs = [client.experiment(i) for i in experiment_ids]
    by_id = {run["id"]: run for run in runs}
    for run in runs:
        baseline_id = run.get("baseline_id")
        if baseline_id is not None and baseline_id not in by_id:
            try:
                by_id[baseline_id] = client.experiment(baseline_id)
            except ApiError as error:  # a baseline deleted since: no Δ for this run
                if error.status != 404:
                    raise
    epochs = {run["id"]: client.metrics(run["id"])["epochs"] for run in runs}
    rows = compare_render.compare_rows(runs, epochs, by_id)
    if as_json:
        print_json(rows)
        return
    if as_csv:
        print_csv(rows, compare_render.COMPARE_COLUMNS)
        return
    out = render.console()
    out.print(compare_render.compare_table(rows))
    for line in compare_render.compare_notes(rows) + render.smoke_note(
        r.get("base_preset") for r in runs
    ):
        out.print(line)
    differing = compare_render.differences(runs)
    if differing is not None:
        out.print(differing)


@app.command()
@handled
def verdict(
    ctx: typer.Context,
    experiment_id: RunId,
    as_json: JsonOption = False,
) -> None:
    """A run's verdict against its dense baseline: primary, secondary, tertiary."""
    answer = api(ctx).verdict(experiment_id)
    if as_json:
        print_json(answer)
        return
    out = render.console()
    out.print(
        f"experiment {experiment_id} against dense run {answer['baseline_id']}: "
        + ("passed" if answer["passed"] else "not passed")
    )
    out.print(render.verdict_table(answer))
    out.print(render.verdict_significance(answer))


@app.command()
@handled
def cancel(ctx: typer.Context, experiment_id: RunId) -> None:
    """Cancel a queued or running run (a running one stops within a step or two)."""
    run = api(ctx).cancel(experiment_id)
    if run["status"] == "cancelled":
        render.console().print(f"experiment {experiment_id} cancelled")
    else:
        render.console().print(
            f"experiment {experiment_id}: cancel requested, it stops within a step or two"
            f" ({run['status']})"
        )


@app.command()
@handled
def logs(
    ctx: typer.Context,
    experiment_id: RunId,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing as it grows")
    ] = False,
    interval: Annotated[float, typer.Option(help="seconds between polls with -f")] = 1.0,
) -> None:
    """The run's log; -f follows it until the run ends."""
    client = api(ctx)
    text, offset = client.logs(experiment_id)
    sys.stdout.write(text)
    sys.stdout.flush()
    while follow:
        time.sleep(interval)
        text, offset = client.logs(experiment_id, offset)
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
        elif client.experiment(experiment_id)["status"] in FINISHED:
            # one last read: what the run wrote between the poll and its end
            text, offset = client.logs(experiment_id, offset)
            sys.stdout.write(text)
            break


@app.command()
@handled
def download(
    ctx: typer.Context,
    experiment_id: RunId,
    name: Annotated[str | None, typer.Argument(help="the artifact (none: list them)")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="the folder to write to")] = Path(
        "."
    ),
    as_json: JsonOption = False,
) -> None:
    """List a run's artifacts, or download one (checkpoint.pt, model.pt, result.json, run.log)."""
    client = api(ctx)
    fetch_artifact(
        listing=lambda: client.artifacts(experiment_id),
        fetch=lambda name, dest: client.download(experiment_id, name, dest),
        name=name,
        output=output,
        as_json=as_json,
    )


# `artifacts`, as the API names them (and as users type it): the same command.
app.command("artifacts", help="The same as download: list a run's artifacts, or download one.")(
    download
)


def fetch_artifact(
    *,
    listing: Callable[[], dict],
    fetch: Callable[[str, Path], int],  # (the artifact's name, where to write it)
    name: str | None,
    output: Path,
    as_json: bool,
) -> None:
    out = render.console()
    if name is None:
        answer = listing()
        if as_json:
            print_json(answer)
            return
        grid = render.table("name", "size", "modified", right=("size",))
        for item in answer["items"]:
            # a run that has not succeeded left it: not its final output
            name = f"{item['name']} (partial)" if item.get("partial") else item["name"]
            grid.add_row(name, render.size(item.get("size")), render.when(item.get("modified_at")))
        out.print(grid)
        return
    if "/" in name or name in ("", ".", ".."):
        raise UsageProblem(f"{name!r} is not an artifact's name")
    output.mkdir(parents=True, exist_ok=True)
    target = output / name
    written = fetch(name, target)
    out.print(f"wrote {target} ({render.size(written)})")


@app.command()
@handled
def delete(
    ctx: typer.Context,
    experiment_id: RunId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Delete a finished run, its metrics and its artifacts."""
    client = api(ctx)
    if not yes:
        run = client.experiment(experiment_id)
        typer.confirm(
            f"delete experiment {experiment_id} {run['name']!r} ({run['status']}) and its artifacts?",
            abort=True,
        )
    client.delete_experiment(experiment_id)
    render.console().print(f"deleted experiment {experiment_id}")
