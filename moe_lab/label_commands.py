"""`moe-lab tag | note`: a run's labels, the only things about it that change after
submission (PATCH /experiments/{id})."""

from __future__ import annotations

from typing import Annotated

import typer

from moe_lab import render
from moe_lab.app import JsonOption, UsageProblem, api, app, handled, print_json
from moe_lab.completion import RunId


# `-b` must reach the command as a tag to remove, not be parsed as an unknown option.
@app.command(context_settings={"ignore_unknown_options": True})
@handled
def tag(
    ctx: typer.Context,
    experiment_id: RunId,
    changes: Annotated[
        list[str],
        typer.Argument(metavar="[+|-]TAG...", help="+TAG (or a bare TAG) adds it, -TAG removes it"),
    ],
    as_json: JsonOption = False,
) -> None:
    """Add and remove a run's tags: moe-lab tag 3 +keep -draft."""
    add, remove = split_tags(changes)
    run = api(ctx).update(experiment_id, add_tags=add, remove_tags=remove)
    if as_json:
        print_json(run)
        return
    render.console().print(f"experiment {experiment_id} tags: {', '.join(run['tags']) or '(none)'}")


def split_tags(changes: list[str]) -> tuple[list[str], list[str]]:
    add: list[str] = []
    remove: list[str] = []
    for change in changes:
        sign, name = (change[0], change[1:]) if change[:1] in "+-" else ("+", change)
        if not name:
            raise UsageProblem(f"{change!r} names no tag")
        target = add if sign == "+" else remove
        if name not in target:
            target.append(name)
    if both := sorted(set(add) & set(remove)):
        raise UsageProblem(f"both added and removed: {', '.join(both)}")
    return add, remove


@app.command()
@handled
def note(
    ctx: typer.Context,
    experiment_id: RunId,
    text: Annotated[str | None, typer.Argument(help="the note (none: print the note)")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the note")] = False,
    as_json: JsonOption = False,
) -> None:
    """Set a run's note (moe-lab note 3 "lr too high"), clear it (--clear), or print it."""
    if clear and text is not None:
        raise UsageProblem("give a note or --clear, not both")
    client = api(ctx)
    if clear or text is not None:
        run = client.update(experiment_id, note=None if clear else text)
    else:
        run = client.experiment(experiment_id)
    if as_json:
        print_json(run)
    elif run.get("note"):
        render.console().print(run["note"], markup=False, highlight=False)
    else:
        render.console().print(f"experiment {experiment_id} has no note")
