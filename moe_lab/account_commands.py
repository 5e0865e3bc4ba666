"""`moe-lab login | logout | whoami` and `moe-lab token create | ls | revoke`: who the CLI
is on a shared API, and the tokens that say so (GET /users/me, /users/{name}/tokens).

A token's secret is printed once, by `token create`, alone on stdout (what a script keeps:
`T=$(moe-lab token create ci)`), its warning on stderr; `login` never prints it.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from moe_lab import credentials, render
from moe_lab.app import JsonOption, UsageProblem, api, app, handled, print_json, token_app
from moe_lab.client import ApiError

UserOption = Annotated[
    str | None, typer.Option("--user", "-u", help="another user's (admins); default: yours")
]


@app.command()
@handled
def login(
    ctx: typer.Context,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="the token (else read from stdin, or asked for, hidden: a shell's history "
            "keeps --token)",
        ),
    ] = None,
) -> None:
    """Keep a token for this API (checked with GET /users/me) in your config file, 0600."""
    client = api(ctx)
    if token is None and not sys.stdin.isatty():  # piped: `moe-lab login < file`
        token = sys.stdin.readline()
    elif token is None:
        token = typer.prompt(f"token for {client.base_url}", hide_input=True, err=True)
    token = token.strip()
    if not token:
        raise UsageProblem("no token given")
    try:
        me = client.with_token(token).me()
    except ApiError as exc:
        if exc.status != 401:
            raise
        render.stderr_line(f"error: {exc}: nothing was kept")
        raise typer.Exit(1) from None
    path = credentials.save(credentials.Login(client.base_url, token))
    out = render.console()
    out.print(f"logged in to {client.base_url} as {me['name']} ({me['role']})")
    out.print(f"the token is kept in {path} (readable by you only)", soft_wrap=True)
    if os.environ.get("MOE_API_TOKEN"):
        render.stderr_line("note: MOE_API_TOKEN is set, and is sent instead until it is unset")


@app.command()
@handled
def logout() -> None:
    """Forget the token `moe-lab login` kept (it works until revoked: moe-lab token revoke)."""
    path = credentials.config_path()
    if credentials.forget(path):
        render.console().print(f"logged out: {path} removed", soft_wrap=True)
    else:
        render.console().print("not logged in: nothing to forget")


@app.command()
@handled
def whoami(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Who the API says you are, where the token came from, and your queue quotas."""
    client = api(ctx)
    me = client.me()
    if as_json:
        print_json(me)
        return
    out = render.console()
    out.print(f"{me['name']} ({me['role']}{', disabled' if me['disabled'] else ''}) "
              f"at {client.base_url}")  # fmt: skip
    out.print(f"token: {token_origin(client.token_source)}", soft_wrap=True)
    out.print(f"queued runs: {me['queued_runs']} (limit: {limit(me['max_queued_runs'])}); "
              f"GPUs in use: {me['gpus_in_use']} (limit: {limit(me['max_gpus'])})")  # fmt: skip


def token_origin(source: str | None) -> str:
    if source is None:
        return "none sent (this API is open: no MOE_API_TOKEN on the server)"
    if source in ("MOE_API_TOKEN", "argument"):
        return source
    return f"kept by moe-lab login in {source}"


def limit(value: int | None, default: str = "the deployment's") -> str:
    """A user's quota as the API gives it: null is the deployment's default."""
    return default if value is None else str(value)


@token_app.command("create")
@handled
def token_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="where it is used: laptop, ci, ...")],
    expires_in_days: Annotated[
        int | None,
        typer.Option("--expires-in-days", min=1, help="it stops working after N days"),
    ] = None,
    user: UserOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a token. Its secret is printed this once: the API keeps only its hash."""
    made = api(ctx).create_token(name, user=user, expires_in_days=expires_in_days)
    if as_json:
        print_json(made)
    else:
        sys.stdout.write(made["token"] + "\n")  # not rich: it would wrap a long line
    expires = render.when(made["expires_at"]) if made.get("expires_at") else "never"
    render.stderr_line(f"token {made['id']} {made['name']!r} (expires: {expires}): "
                       "shown this once, it cannot be shown again; keep it now")  # fmt: skip


@token_app.command("ls")
@handled
def token_ls(ctx: typer.Context, user: UserOption = None, as_json: JsonOption = False) -> None:
    """Tokens, revoked and expired ones too (their secrets are never shown again)."""
    tokens = api(ctx).tokens(user=user)
    if as_json:
        print_json(tokens)
        return
    grid = render.table("id", "name", "state", "created", "expires", "last used", right=("id",))
    for token in tokens["items"]:
        grid.add_row(
            str(token["id"]), token["name"], token_state(token), render.when(token["created_at"]),
            render.when(token["expires_at"]) or "never", render.when(token["last_used_at"]) or "-",
        )  # fmt: skip
    render.console().print(grid)


def token_state(token: dict[str, Any], now: datetime | None = None) -> str:
    if token.get("revoked_at"):
        return "revoked"
    expires = token.get("expires_at")
    if not expires:
        return "active"
    at = datetime.fromisoformat(expires)
    if (at if at.tzinfo else at.replace(tzinfo=UTC)) <= (now or datetime.now(UTC)):
        return "expired"
    return "active"


@token_app.command("revoke")
@handled
def token_revoke(
    ctx: typer.Context,
    token_id: Annotated[int, typer.Argument(metavar="ID", help="the token's id (token ls)")],
    user: UserOption = None,
) -> None:
    """Revoke a token: the API refuses it from its next request on."""
    api(ctx).revoke_token(token_id, user=user)
    render.console().print(f"token {token_id} revoked")
