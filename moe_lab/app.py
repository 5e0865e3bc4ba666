"""The `moe-lab` command line's application: its Typer apps, the --url option and the
client it builds, and how every command reports an error (one line on stderr)."""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import json
import os
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar, cast

import typer

from moe_core.presets import BASE_PRESETS
from moe_lab import render
from moe_lab.client import DEFAULT_URL, ApiError, Client
from moe_lab.credentials import LoginFileError

# The presets' names, from the engine's registry (moe_core.presets: plain data, no
# pydantic or torch, so the client needs neither). tiny is the API's default base.
BASE_PRESETS_HELP = " | ".join(
    f"{n} (the API's default)" if n == "tiny" else n for n in BASE_PRESETS
)

app = typer.Typer(
    name="moe-lab",
    help="Submit, follow and compare Mixture-of-Experts experiments on a moe-lab API.",
    no_args_is_help=True,
    # -h too, inherited by every command: `tag 2 -h` asks for help, not to remove a tag "h"
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=True,  # --install-completion and --show-completion, typer's own
    pretty_exceptions_show_locals=False,  # a traceback must never print the token
)
study_app = typer.Typer(
    help="Studies: a dense baseline plus MoE presets, over one or more seeds.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")
sweep_app = typer.Typer(
    help="Sweeps: a design space searched (grid, random, TPE), each trial judged against dense.",
    no_args_is_help=True,
)
app.add_typer(sweep_app, name="sweep")
token_app = typer.Typer(
    help="Your API tokens (an admin's --user: another's): create, list, revoke.",
    no_args_is_help=True,
)
app.add_typer(token_app, name="token")
admin_app = typer.Typer(
    help="For admins: the lab's users, the audit trail, a run's priority.", no_args_is_help=True
)
app.add_typer(admin_app, name="admin")
admin_user_app = typer.Typer(
    help="Users: add, list, change, disable and enable.", no_args_is_help=True
)
admin_app.add_typer(admin_user_app, name="user")


class UsageProblem(Exception):
    """A command line that cannot become a request (a bad --set, an unreadable file)."""


P = ParamSpec("P")
R = TypeVar("R")


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """API errors and bad input as one line on stderr (exit 1 and 2); Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            # the command's typer context, where it takes one
            ctx = cast("typer.Context | None", kwargs.get("ctx"))
            render.stderr_line(f"error: {exc}{_whose_token(exc, ctx)}")
            raise typer.Exit(1) from None
        except UsageProblem as exc:
            render.stderr_line(f"error: {exc}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            render.stderr_line("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _whose_token(error: ApiError, ctx: typer.Context | None) -> str:
    """After a 401: which token was refused, or that none was sent (and how to send one)."""
    if error.status != 401:
        return ""
    client = ctx.find_object(Client) if ctx is not None else None
    source = client.token_source if client else None
    if source is None:
        return " (no token was sent: moe-lab login, or MOE_API_TOKEN)"
    if source == "MOE_API_TOKEN":
        return " (the token in MOE_API_TOKEN)"
    if source == "argument":
        return ""
    return f" (the token moe-lab login kept in {source}: moe-lab login again)"


def version() -> str:
    """The installed package's version; from a bare checkout, pyproject.toml's (its source)."""
    try:
        return importlib.metadata.version("moe-lab")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]


def _print_version(wanted: bool) -> None:
    if wanted:
        sys.stdout.write(f"moe-lab {version()}\n")
        raise typer.Exit(0)


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option("--url", envvar="MOE_API_URL", help="the API (default http://127.0.0.1:8000)"),
    ] = None,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """MOE_API_TOKEN, when set, is sent as a bearer token; else the token `moe-lab login`
    kept for this URL."""
    # A test (or a program embedding the CLI) may hand in its own Client as the context object.
    if isinstance(ctx.obj, Client):
        return
    try:
        ctx.obj = Client(url)
    except LoginFileError as exc:
        if ctx.invoked_subcommand not in ("login", "logout"):  # they replace the file
            render.stderr_line(f"error: {exc}")
            raise typer.Exit(2) from None
        ctx.obj = Client(url or os.environ.get("MOE_API_URL") or DEFAULT_URL, token="")


def api(ctx: typer.Context) -> Client:
    client = ctx.find_object(Client)
    assert client is not None
    return client


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def print_csv(rows: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)


def one_output(**flags: bool) -> None:
    """Refuse two output formats at once (`--csv --json`), before anything is asked of the
    API: which one wins would otherwise be an accident of the code."""
    given = [f"--{name}" for name, on in flags.items() if on]
    if len(given) > 1:
        raise UsageProblem(f"{' and '.join(given)} conflict: choose one output")


JsonOption = Annotated[bool, typer.Option("--json", help="print the API's JSON, for scripts")]
CsvOption = Annotated[bool, typer.Option("--csv", help="CSV on stdout")]


MineOption = Annotated[bool, typer.Option("--mine", help="only yours (?owner=me)")]
OwnerOption = Annotated[str | None, typer.Option("--owner", help="only this user's")]


def owner_filter(mine: bool, owner: str | None) -> str | None:
    """The `owner` a list asks for: `me` with --mine, else --owner's user (not both)."""
    if mine and owner is not None:
        raise UsageProblem("--mine and --owner conflict: choose one")
    return "me" if mine else owner
