"""`moe-lab`: the command line of the moe-lab API, a thin layer over moe_lab.client.Client.

    moe-lab submit top2-run --preset top2 --set config.dropout=0.2 --set base.num_epochs=2 --wait
    moe-lab ls --status running
    moe-lab compare 1 2 3

MOE_API_URL (default http://127.0.0.1:8000) and MOE_API_TOKEN say where and as whom. An
error of the API is one line on stderr and exit status 1; read commands take --json.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml

from moe_core.presets import BASE_PRESETS, EXPERIMENT_PRESETS, SPEC_EXPERIMENTS
from moe_lab import render
from moe_lab.client import FINISHED, ApiError, Client
from moe_lab.follow import Follower

# The presets' names, from the engine's registry (moe_core.presets: plain data, no
# pydantic or torch, so the client needs neither). tiny is the API's default base.
BASE_PRESETS_HELP = " | ".join(
    f"{n} (the API's default)" if n == "tiny" else n for n in BASE_PRESETS
)

app = typer.Typer(
    name="moe-lab",
    help="Submit, follow and compare Mixture-of-Experts experiments on a moe-lab API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # a traceback must never print the token
)
study_app = typer.Typer(
    help="Studies: a dense baseline plus MoE presets, over one or more seeds.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")


class UsageProblem(Exception):
    """A command line that cannot become a request (a bad --set, an unreadable file)."""


F = TypeVar("F", bound=Callable[..., Any])


def handled(fn: F) -> F:
    """API errors and bad input as one line on stderr (exit 1 and 2); Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            render.stderr_line(f"error: {exc}")
            raise typer.Exit(1) from None
        except UsageProblem as exc:
            render.stderr_line(f"error: {exc}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            render.stderr_line("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option("--url", envvar="MOE_API_URL", help="the API (default http://127.0.0.1:8000)"),
    ] = None,
) -> None:
    """MOE_API_TOKEN, when set, is sent as a bearer token."""
    # A test (or a program embedding the CLI) may hand in its own Client as the context object.
    if not isinstance(ctx.obj, Client):
        ctx.obj = Client(url)


def api(ctx: typer.Context) -> Client:
    client = ctx.find_object(Client)
    assert client is not None
    return client


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


JsonOption = Annotated[bool, typer.Option("--json", help="print the API's JSON, for scripts")]


# --------------------------------------------------------------------------- request bodies


def parse_value(text: str) -> Any:
    """A --set value: JSON when it parses (2, 0.1, true, null, [2, 4], {"a": 1}), else the
    text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_sets(body: dict[str, Any], assignments: list[str], roots: tuple[str, ...]) -> None:
    """`config.top_k=2`, `base.num_epochs=2`: each into its section of the body."""
    for item in assignments:
        key, sep, raw = item.partition("=")
        path = key.strip().split(".")
        if not sep or len(path) < 2 or path[0] not in roots or not all(path):
            wanted = " or ".join(f"{root}.FIELD=VALUE" for root in roots)
            raise UsageProblem(f"--set takes {wanted}, not {item!r}")
        node = body
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageProblem(f"--set {item!r}: {part} is not an object in the request")
            node = child
        node[path[-1]] = parse_value(raw)


def load_body(file: Path) -> dict[str, Any]:
    """A request body from a JSON or YAML file (the same fields the API takes)."""
    try:
        text = file.read_text()
        body = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise UsageProblem(f"cannot read {file}: {' '.join(str(exc).split())}") from exc
    if body is None:  # nothing but whitespace or comments: not a request anyone meant
        raise UsageProblem(f"{file} is empty; it must hold the request body (an object)")
    if not isinstance(body, dict):
        raise UsageProblem(
            f"{file} must hold an object (the request body), not {type(body).__name__}"
        )
    return body


def check_finite(value: Any, where: str = "") -> None:
    """Every number in the body finite: JSON has no NaN or Infinity (`--set x=NaN`, `1e309`,
    YAML's `.inf` all parse as such), so the request could not even be sent."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageProblem(f"{where}: {value} is not a finite number (JSON has none)")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_finite(item, f"{where}[{index}]")


def split_list(values: list[str]) -> list[str]:
    """`-e baseline -e top2` and `-e baseline,top2` alike."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


# --------------------------------------------------------------------------- experiments


@app.command()
@handled
def submit(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="the run's name (else the file's)")] = None,
    preset: Annotated[
        str | None,
        typer.Option("--preset", "-p", help=" | ".join(EXPERIMENT_PRESETS)),
    ] = None,
    base_preset: Annotated[
        str | None,
        typer.Option("--base-preset", "-b", help=BASE_PRESETS_HELP),
    ] = None,
    dense: Annotated[bool, typer.Option("--dense", help="a dense baseline run")] = False,
    baseline: Annotated[
        int | None, typer.Option("--baseline", help="the dense run to judge this one against")
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
    check_finite(body)
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


def print_plan(out: Any, plan: Mapping[str, Any]) -> None:
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
    ]  # fmt: skip
    for label, text in rows:
        grid.add_row(label, text)
    out.print("dry run: nothing stored or queued (--json for the resolved config)")
    out.print(grid)


def wait_quietly(client: Client, experiment_id: int) -> dict:
    for _ in client.events(experiment_id):
        pass
    return client.experiment(experiment_id)


@app.command()
@handled
def watch(ctx: typer.Context, experiment_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
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
    study: Annotated[int | None, typer.Option(help="the members of this study")] = None,
    preset: Annotated[str | None, typer.Option(help="runs of this preset")] = None,
    dense: Annotated[
        bool | None, typer.Option("--dense/--moe", help="only dense runs, or only MoE runs")
    ] = None,
    order: Annotated[
        str | None, typer.Option(help="newest (default) | val_ce (best validation CE first)")
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List experiments (GET /experiments)."""
    page = api(ctx).list_experiments(
        status=status, name=name, tag=tag, study_id=study, preset=preset, dense=dense,
        order=order, limit=limit,
    )  # fmt: skip
    if as_json:
        print_json(page)
        return
    out = render.console()
    grid = render.table(
        "id", "name", "preset", "status", "epoch", "best val CE", "tags", "created",
        right=("id", "epoch", "best val CE"),
    )  # fmt: skip
    for run in page["items"]:
        grid.add_row(
            str(run["id"]),
            run["name"],
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
    experiment_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: JsonOption = False,
) -> None:
    """An experiment's key fields and, while it runs, where it is."""
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
    out.print(grid)


@app.command()
@handled
def metrics(
    ctx: typer.Context,
    experiment_id: Annotated[int, typer.Argument(metavar="ID")],
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout")] = False,
    as_json: JsonOption = False,
) -> None:
    """Per-epoch metrics: losses, throughput and the last MoE layer's routing."""
    answer = api(ctx).metrics(experiment_id)
    if as_json:
        print_json(answer)
        return
    rows = render.metrics_rows(answer["epochs"])
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(render.METRICS_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
        return
    out = render.console()
    out.print(render.metrics_table(rows, title=f"experiment {experiment_id} ({answer['status']})"))


@app.command()
@handled
def compare(
    ctx: typer.Context,
    experiment_ids: Annotated[list[int], typer.Argument(metavar="ID...", help="runs to compare")],
    as_json: JsonOption = False,
) -> None:
    """Runs side by side: validation CE, perplexity, speed, routing and Δ against dense."""
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
    rows = render.compare_rows(runs, epochs, by_id)
    if as_json:
        print_json(rows)
        return
    render.console().print(render.compare_table(rows))


@app.command()
@handled
def verdict(
    ctx: typer.Context,
    experiment_id: Annotated[int, typer.Argument(metavar="ID")],
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
    if answer.get("significance_note"):
        out.print(answer["significance_note"])


@app.command()
@handled
def cancel(ctx: typer.Context, experiment_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
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
    experiment_id: Annotated[int, typer.Argument(metavar="ID")],
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
    experiment_id: Annotated[int, typer.Argument(metavar="ID")],
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
        fetch=lambda dest: client.download(experiment_id, name, dest),
        name=name,
        output=output,
        as_json=as_json,
    )


def fetch_artifact(
    *,
    listing: Callable[[], dict],
    fetch: Callable[[Path], int],
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
    written = fetch(target)
    out.print(f"wrote {target} ({render.size(written)})")


@app.command()
@handled
def delete(
    ctx: typer.Context,
    experiment_id: Annotated[int, typer.Argument(metavar="ID")],
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


# --------------------------------------------------------------------------- studies


@study_app.command("submit")
@handled
def study_submit(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the study's name")],
    base_preset: Annotated[
        str | None,
        typer.Option("--base-preset", "-b", help=BASE_PRESETS_HELP),
    ] = None,
    experiments: Annotated[
        list[str] | None,
        typer.Option(
            "--experiments",
            "-e",
            help=f"presets, comma-separated or repeated, of {', '.join(EXPERIMENT_PRESETS)} "
            f"(default: the spec's four, {', '.join(SPEC_EXPERIMENTS)})",
        ),
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="run everything once per seed (1-10)")] = None,
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
    apply_sets(body, sets or [], ("base",))
    check_finite(body)
    client = api(ctx)
    out = render.console()
    study = client.create_study(body, dry_run=dry_run, idempotency_key=idempotency_key)
    if dry_run:
        if as_json:
            print_json(study)
            return
        out.print(f"seeds {', '.join(map(str, study['seeds']))}; per seed:")
        for plan in study["runs"]:
            print_plan(out, plan)
        return
    if as_json and not wait:
        print_json(study)
        return
    if not as_json:
        members = ", ".join(f"{m['name']} {m['id']}" for m in study["members"])
        out.print(f"submitted study {study['id']} {study['name']!r}: {members}")
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


def print_study(out: Any, study: Mapping[str, Any]) -> None:
    out.print(
        f"study {study['id']} {study['name']!r}: {study['status']}, base "
        f"{study.get('base_preset') or 'custom'}, {study['seeds']} seed(s), "
        f"dense runs {', '.join(map(str, study['dense_ids']))}"
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
    if any(d.get("p_value") is not None for d in tests):
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
    study_id: Annotated[int, typer.Argument(metavar="ID")],
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
    limit: Annotated[int, typer.Option(help="at most this many")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List studies (GET /studies)."""
    page = api(ctx).list_studies(limit=limit)
    if as_json:
        print_json(page)
        return
    grid = render.table(
        "id", "name", "status", "seeds", "runs", "created", right=("id", "seeds", "runs")
    )
    for study in page["items"]:
        grid.add_row(
            str(study["id"]), study["name"], study["status"], str(study["seeds"]),
            str(len(study["member_ids"])), render.when(study.get("created_at")),
        )  # fmt: skip
    render.console().print(grid)


@study_app.command("download")
@handled
def study_download(
    ctx: typer.Context,
    study_id: Annotated[int, typer.Argument(metavar="ID")],
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
        fetch=lambda dest: client.download_study(study_id, name, dest),
        name=name,
        output=output,
        as_json=as_json,
    )


@study_app.command("delete")
@handled
def study_delete(
    ctx: typer.Context,
    study_id: Annotated[int, typer.Argument(metavar="ID")],
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
