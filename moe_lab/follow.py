"""Follow a run on its event stream: a progress bar per epoch, a line per finished epoch,
the final status and, for a judged run, its verdict. What `submit --wait` and `watch` show.

On a terminal the progress is a live rich bar (steps of the epoch, tokens/s, the run's ETA);
elsewhere (a pipe, a log file, CI) it is a line whenever the run enters a new phase or epoch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from moe_lab import render
from moe_lab.client import FINISHED, ApiError, Client


class Follower:
    def __init__(self, client: Client, console: Console) -> None:
        self.client = client
        self.console = console

    def follow(self, run: Mapping[str, Any], *, show_verdict: bool = True) -> dict:
        """Follow `run` (an experiment as the API returns it) to its end; returns the
        finished experiment."""
        experiment_id = run["id"]
        num_epochs = run.get("num_epochs")
        shown: set[int] = set()
        live = self.console.is_terminal and not self.console.is_dumb_terminal
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[speed]}"),
            TextColumn("{task.fields[eta]}"),
            console=self.console,
            transient=True,
            disable=not live,
        )
        task: TaskID | None = None
        task_epoch: int | None = None
        last_phase: tuple[Any, Any] | None = None
        last_status: str | None = run.get("status")

        # Epochs that ended before we looked (a stream may not replay them).
        if run.get("current_epoch"):
            for epoch in self.client.metrics(experiment_id)["epochs"]:
                self.console.print(render.epoch_line(epoch, num_epochs))
                shown.add(epoch["epoch"])

        with progress, _interrupt_hint(self.console, experiment_id):
            for event in self.client.events(experiment_id):
                data = event.data if isinstance(event.data, dict) else {}
                if event.event == "status":
                    status = data.get("status")
                    if status != last_status and status not in FINISHED:  # said below
                        self.console.print(f"experiment {experiment_id} {status}")
                    last_status = status
                elif event.event == "progress":
                    epoch = data.get("epoch")
                    if epoch in shown:
                        continue
                    if live:
                        if task is None or epoch != task_epoch:
                            if task is not None:
                                progress.remove_task(task)
                            task = progress.add_task("", total=None, speed="", eta="")
                            task_epoch = epoch
                        phase = str(data.get("phase") or "").replace("_", " ")
                        progress.update(
                            task,
                            description=f"epoch {epoch}/{num_epochs} {phase}",
                            total=data.get("steps_per_epoch"),
                            completed=data.get("step") or 0,
                            speed=f"{data['tokens_per_sec']:,.0f} tok/s"
                            if data.get("tokens_per_sec")
                            else "",
                            eta=f"ETA {render.duration(data['eta_seconds'])}"
                            if data.get("eta_seconds") is not None
                            else "",
                        )
                        progress.refresh()  # events come a second or so apart: show each
                    elif (data.get("phase"), epoch) != last_phase:
                        self.console.print("  " + render.progress_line(data, num_epochs))
                    last_phase = (data.get("phase"), epoch)
                elif event.event == "epoch" and data.get("epoch") not in shown:
                    if task is not None and task_epoch == data["epoch"]:
                        progress.remove_task(task)
                        progress.refresh()  # else the line below redraws the stale bar
                        task = None
                    self.console.print(render.epoch_line(data, num_epochs))
                    shown.add(data["epoch"])

        final = self.client.experiment(experiment_id)
        self.print_outcome(final)
        if show_verdict and final["status"] == "succeeded" and final.get("baseline_id"):
            try:
                verdict = self.client.verdict(experiment_id)
            except ApiError as exc:  # a baseline that never finished: no verdict to show
                self.console.print(f"no verdict: {exc}")
            else:
                self.console.print(
                    f"verdict against dense run {verdict['baseline_id']}: "
                    + ("passed" if verdict["passed"] else "not passed")
                )
                self.console.print(render.verdict_table(verdict))
                self.console.print(render.verdict_significance(verdict))
        return final

    def print_outcome(self, run: Mapping[str, Any]) -> None:
        line = f"experiment {run['id']} {run['status']}"
        if run["status"] == "succeeded":
            line += (
                f": best val CE {render.num(run.get('best_val_ce_loss'), '.4f')}"
                f", test CE {render.num(run.get('test_ce_loss'), '.4f')}"
                f", {run['current_epoch']}/{run['num_epochs']} epochs"
            )
            if run.get("stopped_early"):
                line += " (stopped early)"
        elif run.get("error"):
            line += f": {run['error']}"
        self.console.print(line)


@contextlib.contextmanager
def _interrupt_hint(console: Console, experiment_id: int) -> Iterator[None]:
    """Ctrl-C stops following, not the run: say so, and how to pick it up again."""
    try:
        yield
    except KeyboardInterrupt:
        console.print(
            f"stopped following; experiment {experiment_id} goes on "
            f"(moe-lab watch {experiment_id}, or moe-lab cancel {experiment_id})"
        )
        raise
