"""The live rendering of a run on a terminal (what `submit --wait` shows in a shell): a rich
progress bar per epoch that gives way to the epoch's line. The service tests run off a
terminal (plain lines); here a console that is a terminal renders a scripted stream."""

from __future__ import annotations

import io
import re

from rich.console import Console

from moe_lab.events import Event
from moe_lab.follow import Follower
from tests.factories import record

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class ScriptedRun:
    """The few client calls Follower makes, answered from a script of events."""

    def __init__(self, events: list[Event]) -> None:
        self.script = events
        self.run = {"id": 7, "status": "succeeded", "current_epoch": 2, "num_epochs": 2,
                    "best_val_ce_loss": 5.0, "test_ce_loss": 5.1, "baseline_id": None,
                    "stopped_early": False, "error": None}  # fmt: skip

    def events(self, experiment_id: int):
        assert experiment_id == 7
        yield from self.script

    def experiment(self, experiment_id: int) -> dict:
        return self.run

    def metrics(self, experiment_id: int) -> dict:
        raise AssertionError("a run that has not started has no epochs to read first")


def progress(epoch: int, step: int, phase: str = "training") -> Event:
    data = {"phase": phase, "epoch": epoch, "step": step, "steps_per_epoch": 10,
            "tokens_per_sec": 5100.0, "eta_seconds": 72.0, "updated_at": "2026-01-01T00:00:00"}  # fmt: skip
    return Event("progress", data, None)


def test_a_terminal_gets_a_bar_per_epoch_that_gives_way_to_the_epochs_line():
    script = [
        Event("status", {"status": "running", "error": None, "current_epoch": 0}, "0"),
        progress(1, 0, "preparing_data"),
        progress(1, 4),
        progress(1, 10, "evaluating"),
        Event("epoch", record(1, 6.0, layers=()), "1"),
        progress(1, 10, "evaluating"),  # a late report of an epoch already shown: no bar
        progress(2, 3),
        Event("epoch", record(2, 5.0, layers=()), "2"),
        Event("status", {"status": "succeeded", "error": None, "current_epoch": 2}, "2"),
    ]
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system="standard")
    run = {"id": 7, "status": "queued", "current_epoch": 0, "num_epochs": 2}
    final = Follower(ScriptedRun(script), console).follow(run)  # type: ignore[arg-type]  # a scripted stand-in for the Client
    assert final["status"] == "succeeded"

    raw = ANSI.sub("", out.getvalue())
    assert "epoch 1/2 training" in raw and "4/10" in raw and "5,100 tok/s" in raw
    assert "ETA 1m 12s" in raw
    # each epoch's line once; after it, its bar is never drawn again
    for epoch in (1, 2):
        line = f"epoch {epoch}/2  train loss"
        assert raw.count(line) == 1
        assert f"epoch {epoch}/2 training" not in raw[raw.index(line) :], raw
        assert f"epoch {epoch}/2 evaluating" not in raw[raw.index(line) :], raw
    assert raw.index("epoch 1/2  train loss") < raw.index("epoch 2/2 training")
    assert "experiment 7 running" in raw
    assert raw.rstrip().endswith(
        "experiment 7 succeeded: best val CE 5.0000, test CE 5.1000, 2/2 epochs"
    )
