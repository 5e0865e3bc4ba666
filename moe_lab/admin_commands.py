"""`moe-lab admin user add | ls | set | disable | enable`, `admin audit`, `admin priority`:
what an admin does on a shared API (POST/GET/PATCH /users, GET /audit, a run's priority)."""

from __future__ import annotations

import enum
import json
from types import EllipsisType
from typing import Annotated, Any

import typer

from moe_lab import render
from moe_lab.account_commands import limit
from moe_lab.app import (
    JsonOption,
    UsageProblem,
    admin_app,
    admin_user_app,
    api,
    handled,
    print_json,
)
from moe_lab.completion import RunId


class Role(enum.StrEnum):  # store.models.Role's values, as the API takes them
    admin = "admin"
    member = "member"
    viewer = "viewer"


NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="the user's name")]
ROLE_HELP = "admin: everything; member: submits, changes their own work; viewer: reads"


@admin_user_app.command("add")
@handled
def user_add(
    ctx: typer.Context,
    name: NameArgument,
    role: Annotated[Role, typer.Option("--role", "-r", help=ROLE_HELP)],
    max_queued_runs: Annotated[
        int | None,
        typer.Option(
            "--max-queued-runs",
            min=0,
            help="runs they may have queued (default: "
            "the deployment's, MOE_MAX_QUEUED_RUNS_PER_USER)",
        ),
    ] = None,  # fmt: skip
    max_gpus: Annotated[
        int | None,
        typer.Option(
            "--max-gpus",
            min=0,
            help="GPUs their running runs may hold (default: "
            "the deployment's, MOE_MAX_GPUS_PER_USER)",
        ),
    ] = None,  # fmt: skip
    as_json: JsonOption = False,
) -> None:
    """Add a user. They sign in with a token: moe-lab token create NAME --user USER."""
    user = api(ctx).create_user(
        name, role.value, max_queued_runs=max_queued_runs, max_gpus=max_gpus
    )
    if as_json:
        print_json(user)
        return
    render.console().print(
        f"added {user['name']} ({user['role']}); their first token: "
        f"moe-lab token create NAME --user {user['name']}"
    )


@admin_user_app.command("ls")
@handled
def user_ls(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every user: role, state, and what they hold of their quotas now."""
    users = api(ctx).users()
    if as_json:
        print_json(users)
        return
    numbers = ("queued", "queued limit", "GPUs", "GPU limit")
    grid = render.table("name", "role", "state", *numbers, "created", right=numbers)
    for user in users["items"]:
        grid.add_row(
            user["name"], user["role"], "disabled" if user["disabled"] else "active",
            str(user["queued_runs"]), limit(user["max_queued_runs"], "default"),
            str(user["gpus_in_use"]), limit(user["max_gpus"], "default"),
            render.when(user["created_at"]),
        )  # fmt: skip
    render.console().print(grid)


def quota(text: str | None, option: str) -> int | None | EllipsisType:
    """A quota option of `set`: a number, `default` (the deployment's: null), or left out."""
    if text is None:
        return ...
    if text == "default":
        return None
    if not text.isdigit():
        raise UsageProblem(f"{option} takes a number of 0 or more, or 'default' (got {text!r})")
    return int(text)


@admin_user_app.command("set")
@handled
def user_set(
    ctx: typer.Context,
    name: NameArgument,
    role: Annotated[Role | None, typer.Option("--role", "-r", help=ROLE_HELP)] = None,
    max_queued_runs: Annotated[
        str | None, typer.Option("--max-queued-runs", metavar="N|default")
    ] = None,
    max_gpus: Annotated[str | None, typer.Option("--max-gpus", metavar="N|default")] = None,
    as_json: JsonOption = False,
) -> None:
    """Change a user's role or quotas (`default`: the deployment's again)."""
    changes: dict[str, Any] = {
        "max_queued_runs": quota(max_queued_runs, "--max-queued-runs"),
        "max_gpus": quota(max_gpus, "--max-gpus"),
    }
    if role is None and all(v is ... for v in changes.values()):
        raise UsageProblem("nothing to change: give --role, --max-queued-runs or --max-gpus")
    user = api(ctx).update_user(name, role=role.value if role else None, **changes)
    print_user(user, as_json)


def print_user(user: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(user)
        return
    state = "disabled" if user["disabled"] else "active"
    render.console().print(
        f"{user['name']}: {user['role']}, {state}; queued runs limit "
        f"{limit(user['max_queued_runs'])}, GPU limit {limit(user['max_gpus'])}"
    )


@admin_user_app.command("disable")
@handled
def user_disable(ctx: typer.Context, name: NameArgument, as_json: JsonOption = False) -> None:
    """Disable a user: their tokens are refused from their next request; their runs stay
    theirs (and queued ones stay queued: cancel them apart)."""
    print_user(api(ctx).update_user(name, disabled=True), as_json)


@admin_user_app.command("enable")
@handled
def user_enable(ctx: typer.Context, name: NameArgument, as_json: JsonOption = False) -> None:
    """Enable a disabled user again: their tokens that are not revoked or expired work."""
    print_user(api(ctx).update_user(name, disabled=False), as_json)


@admin_app.command("audit")
@handled
def audit(
    ctx: typer.Context,
    limit_: Annotated[int, typer.Option("--limit", min=1, max=1000, help="at most this many")] = 50,
    as_json: JsonOption = False,
) -> None:
    """The audit trail, newest first: who changed what, and when."""
    events = api(ctx).audit(limit=limit_)
    if as_json:
        print_json(events)
        return
    grid = render.table("id", "when", "who", "action", "target", "detail", right=("id",),
                        wrap=("detail",))  # fmt: skip
    for event in events["items"]:
        detail = json.dumps(event["detail"], ensure_ascii=False) if event["detail"] else ""
        grid.add_row(str(event["id"]), render.when(event["at"]), event["actor"], event["action"],
                     event["target"], detail)  # fmt: skip
    out = render.console()
    out.print(grid)
    if events["total"] > len(events["items"]):
        out.print(f"{len(events['items'])} of {events['total']} (--limit for more)")


# a negative N must reach the command as a number, not be parsed as an unknown option
@admin_app.command("priority", context_settings={"ignore_unknown_options": True})
@handled
def priority(
    ctx: typer.Context,
    experiment_id: RunId,
    value: Annotated[
        int, typer.Argument(metavar="N", min=-1000, max=1000, help="higher goes first; 0: usual")
    ],
) -> None:
    """Set a queued run's priority: among users with as many GPUs in use, higher goes first."""
    run = api(ctx).update(experiment_id, priority=value)
    render.console().print(f"experiment {experiment_id}: priority {run['priority']}")
