"""Shell completion of what a command names (typer's `autocompletion=`): run, study and
sweep ids from the API, preset names from the engine's registry (moe_core.presets, no API).

A Tab asks the API once, with a short timeout and no retry, for its newest ids; when the
API cannot be reached, refuses, or answers something else, it completes nothing, silently:
a shell's completion must never print a traceback nor make the shell wait.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Annotated

import typer

from moe_core.presets import BASE_PRESETS, EXPERIMENT_PRESETS
from moe_lab.client import Client
from moe_lab.render import kind

TIMEOUT = 1.0  # seconds: a Tab that waits longer is worse than one that completes nothing
NEWEST = 100  # the ids offered: the newest this many (the API's pages are newest first)

Completion = list[tuple[str, str]]  # (the word, what it names: zsh and fish show it)


@contextlib.contextmanager
def _api(ctx: typer.Context) -> Iterator[Client]:
    """The client the command would use: the context's (a test's, or a program's that
    embeds the CLI), else one on --url / MOE_API_URL / the login, closed after."""
    root = ctx.find_root()
    if isinstance(root.obj, Client):
        yield root.obj
        return
    client = Client(root.params.get("url"), timeout=TIMEOUT, retries=0)
    try:
        yield client
    finally:
        client.close()


def _quiet(ask: Callable[[Client], Completion]) -> Callable[[typer.Context, str], Completion]:
    def complete(ctx: typer.Context, incomplete: str) -> Completion:
        try:
            with _api(ctx) as client:
                return [(word, what) for word, what in ask(client) if word.startswith(incomplete)]
        except Exception:  # noqa: BLE001 (no API, a refusal, a login file unread: no words)
            return []

    return complete


run_ids = _quiet(lambda client: [
    (str(run["id"]), f"{run['name']} ({kind(run)}, {run['status']})")
    for run in client.list_experiments(limit=NEWEST)["items"]
])  # fmt: skip
study_ids = _quiet(lambda client: [
    (str(study["id"]), f"{study['name']} ({study['status']})")
    for study in client.list_studies(limit=NEWEST)["items"]
])  # fmt: skip
sweep_ids = _quiet(lambda client: [
    (str(sweep["id"]), f"{sweep['name']} ({sweep['status']})")
    for sweep in client.list_sweeps(limit=NEWEST)["items"]
])  # fmt: skip


def presets(incomplete: str) -> Completion:
    return [
        (name, "experiment preset") for name in EXPERIMENT_PRESETS if name.startswith(incomplete)
    ]


def preset_list(incomplete: str) -> Completion:
    """`-e baseline,to` -> `baseline,top2`: the last of a comma-separated list."""
    done, _, last = incomplete.rpartition(",")
    head = f"{done}," if done else ""
    return [(head + name, what) for name, what in presets(last) if name not in done.split(",")]


def base_presets(incomplete: str) -> Completion:
    return [(name, "base preset") for name in BASE_PRESETS if name.startswith(incomplete)]


# The arguments and options that name something, with their completion.
RunId = Annotated[int, typer.Argument(metavar="ID", autocompletion=run_ids)]
StudyId = Annotated[int, typer.Argument(metavar="ID", autocompletion=study_ids)]
SweepId = Annotated[
    int, typer.Argument(metavar="ID", help="the sweep's id", autocompletion=sweep_ids)
]
