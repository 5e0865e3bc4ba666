"""How the CLI shows what the API returns: numbers, tables, the rows of metrics and steps,
verdicts and one-line summaries (comparing runs: moe_lab.compare_render).

The row builder `metrics_rows` returns plain dicts, so `--csv` and `--json` print the same
numbers the tables show.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO, cast

from rich import box
from rich.console import Console
from rich.table import Table

from moe_core.criteria import verdict_lines
from moe_core.presets import SMOKE_BASES

CHECK, CROSS, DOT = "✓", "✗", "·"


def console(*, stderr: bool = False) -> Console:
    """A console on the current stdout (or stderr): made per command, so a test runner's
    captured streams are the ones written to. Off a terminal (a pipe, a file), lines are
    not cut at 80 but wrap at 160 (COLUMNS if set), and no line ends in the spaces rich
    pads a table's cells with: what a script reads or a file keeps is the text alone."""
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(
        file=stream if tty else cast(TextIO, TrimmedLines(stream)),
        width=None if tty or "COLUMNS" in os.environ else 160,
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=False,
    )


class TrimmedLines(io.TextIOBase):
    """A text stream whose every line is written without its trailing spaces (a piped
    table's cells are padded to the column's width, its wrapping columns to the console's)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.partial = ""  # the line written so far, until its newline

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        if lines:
            self.stream.write("".join(line.rstrip(" ") + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()  # a partial line waits for its end: its spaces may be padding

    def close(self) -> None:  # the stream is the caller's: only what is left goes to it
        if self.partial:
            self.stream.write(self.partial.rstrip(" "))
            self.partial = ""
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only: the stream's
        return getattr(self.stream, "encoding", None) or "utf-8"


def table(
    *columns: str, title: str | None = None, right: Iterable[str] = (), wrap: Iterable[str] = ()
) -> Table:
    """A plain table; the columns named in `right` (numbers) are right-aligned, those in
    `wrap` (free text) wrap rather than squeeze the others."""
    right, wrap = set(right), set(wrap)
    out = Table(
        box=box.SIMPLE_HEAD, title=title, title_justify="left", show_edge=False, pad_edge=False,
        min_width=len(title) if title else None,  # a narrow table's title on one line
    )  # fmt: skip
    for column in columns:
        out.add_column(
            column,
            justify="right" if column in right else "left",
            no_wrap=column not in wrap,
            min_width=None if column in wrap else len(column),
        )
    return out


# --------------------------------------------------------------------------- numbers


def num(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return format(value, spec)


def signed(value: float | None, spec: str = ".3f") -> str:
    return "" if value is None else format(value, "+" + spec)


def interval(low: float | None, high: float | None, spec: str = ".4f") -> str:
    """'[-0.0910, +0.0010]': a confidence interval."""
    return "" if low is None or high is None else f"[{low:+{spec}}, {high:+{spec}}]"


def p_value(p: float | None) -> str:
    return "" if p is None else "<0.0001" if p < 0.0001 else f"{p:.4f}"


def pct(value: float | None, spec: str = ".1f") -> str:
    return "" if value is None else f"{value:{spec}}%"


def mark(passed: bool | None) -> str:
    return "?" if passed is None else CHECK if passed else CROSS


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def when(stamp: str | None) -> str:
    """An ISO timestamp of the API in this machine's local time, to the minute."""
    if not stamp:
        return ""
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(n)


def kind(experiment: Mapping[str, Any]) -> str:
    """A run's preset, or `dense` for a dense run, or `custom` for a config of its own."""
    if experiment.get("dense"):
        return "dense"
    return experiment.get("preset") or "custom"


# --------------------------------------------------------------------------- metrics


def _last_layer(stats: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return max(stats, key=lambda layer: layer["layer"]) if stats else None


def metrics_rows(epochs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch: losses, throughput, and the last MoE layer's routing (its
    evaluation statistics when the epoch was evaluated, else its training statistics);
    drop % is the share of that layer's training assignments dropped at capacity, imbalance
    its training load's max/mean - 1 (mean over the epoch's steps)."""
    rows = []
    for epoch in epochs:
        val = epoch.get("val") or {}
        evaluated = _last_layer(epoch.get("eval_expert_stats") or [])
        trained = _last_layer(epoch.get("expert_stats") or [])
        usage = evaluated or trained
        dropped = (trained or {}).get("dropped")
        rows.append(
            {
                "epoch": epoch["epoch"],
                "train_loss": epoch["train"]["loss"],
                "train_ce": epoch["train"]["ce_loss"],
                "val_ce": val.get("ce_loss"),
                "val_loss": val.get("loss"),
                "tokens_per_sec": epoch.get("tokens_per_sec"),
                "min_usage_pct": usage["min_usage"] if usage else None,
                "drop_pct": None if dropped is None else 100 * dropped,
                "imbalance": (trained or {}).get("imbalance"),
            }
        )
    return rows


METRICS_COLUMNS = {
    "epoch": ("epoch", "d"),
    "train_loss": ("train loss", ".4f"),
    "train_ce": ("train CE", ".4f"),
    "val_ce": ("val CE", ".4f"),
    "val_loss": ("val loss", ".4f"),
    "tokens_per_sec": ("tokens/s", ",.0f"),
    "min_usage_pct": ("min usage %", ".1f"),
    "drop_pct": ("drop %", ".1f"),
    "imbalance": ("imbalance", ".2f"),
}


def metrics_table(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Table:
    headers = [header for header, _ in METRICS_COLUMNS.values()]
    out = table(*headers, title=title, right=headers)
    for row in rows:
        out.add_row(*(num(row[key], spec) for key, (_, spec) in METRICS_COLUMNS.items()))
    return out


STEPS_COLUMNS = {
    "step": ("step", "d"),
    "epoch": ("epoch", "d"),
    "tokens": ("tokens", ",d"),
    "wall_time": ("time s", ".1f"),
    "loss": ("loss", ".4f"),
    "ce_loss": ("CE", ".4f"),
    "aux_loss": ("aux", ".4f"),
    "learning_rate": ("lr", ".2e"),
    "grad_norm": ("grad norm", ".3f"),
    "tokens_per_sec": ("tokens/s", ",.0f"),
}


def steps_table(points: Sequence[Mapping[str, Any]], title: str | None = None) -> Table:
    """One row per step point (moe_core.records.StepPoint), its keys as the columns."""
    headers = [header for header, _ in STEPS_COLUMNS.values()]
    out = table(*headers, title=title, right=headers)
    for point in points:
        out.add_row(*(num(point.get(key), spec) for key, (_, spec) in STEPS_COLUMNS.items()))
    return out


def verdict_rows(verdict: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    """The verdict's lines as the API serves them (moe_core.criteria.verdict_lines, the one
    definition the dashboard prints too); an API from before `lines` gets them made here."""
    return verdict.get("lines") or verdict_lines(verdict)


def verdict_table(verdict: Mapping[str, Any]) -> Table:
    """A verdict's lines: mark, criterion, the numbers it rests on, the rule it applies."""
    out = table("", "criterion", "numbers", "rule", wrap=("numbers", "rule"))
    for line in verdict_rows(verdict):
        out.add_row(DOT if line["passed"] is None else mark(line["passed"]), line["criterion"],
                    line["summary"], line["rule"])  # fmt: skip
    return out


def verdict_significance(verdict: Mapping[str, Any]) -> str:
    """What the verdict's lines say of significance (the primary line's t-test, or why none)."""
    return "; ".join(line["significance"] for line in verdict_rows(verdict) if line["significance"])


def owned_by(submission: Mapping[str, Any]) -> str:
    """`; owner ada`: the end of a study's or sweep's first line (an API of before owners:
    nothing)."""
    return f"; owner {submission['owner']}" if submission.get("owner") else ""


def experiment_summary(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The key fields of an experiment as (label, text) pairs, empty ones left out."""
    pairs = [
        ("name", run["name"]),
        ("owner", run.get("owner") or ""),
        ("kind", kind(run) + (f" on {run['base_preset']}" if run.get("base_preset") else "")),
        ("status", run["status"] + (" (cancel requested)" if run.get("cancel_requested") else "")),
        ("error", run.get("error") or ""),
        ("epoch", f"{run['current_epoch']}/{run['num_epochs']}"
         + (" (stopped early)" if run.get("stopped_early") else "")),
        ("baseline", str(run["baseline_id"]) if run.get("baseline_id") else ""),
        ("study", str(run["study_id"]) if run.get("study_id") else ""),
        ("priority", str(run["priority"]) if run.get("priority") else ""),
        ("tags", ", ".join(run.get("tags") or [])),
        ("note", run.get("note") or ""),
        ("best val CE", num(run.get("best_val_ce_loss"), ".4f")),
        ("best val loss", num(run.get("best_val_loss"), ".4f")),
        ("test CE", num(run.get("test_ce_loss"), ".4f")),
        ("params", f"{run['params']:,}" if run.get("params") else ""),
        ("active params", f"{run['active_params']:,}" if run.get("active_params") else ""),
        ("device", " on ".join(x for x in (run.get("device"), run.get("worker_name")) if x)),
        ("attempts", f"{run.get('attempts', 0)} (restarts {run.get('restarts', 0)}, "
         f"handbacks {run.get('handbacks', 0)})" if run.get("attempts") else ""),
        ("created", when(run.get("created_at"))),
        ("started", when(run.get("started_at"))),
        ("finished", when(run.get("finished_at"))),
    ]  # fmt: skip
    return [(label, text) for label, text in pairs if text]


def gpu_line(gpu: Mapping[str, Any]) -> str:
    """`NVIDIA H200: 87% busy, 60.0/141.0 GiB, 412 W`: a worker's GPU as NVML last read it."""
    parts = []
    if gpu.get("utilization") is not None:
        parts.append(f"{gpu['utilization']:.0f}% busy")
    if gpu.get("memory_used") is not None and gpu.get("memory_total"):
        parts.append(f"{gpu['memory_used'] / 2**30:.1f}/{gpu['memory_total'] / 2**30:.1f} GiB")
    if gpu.get("power_watts") is not None:
        parts.append(f"{gpu['power_watts']:.0f} W")
    return f"{gpu.get('name') or 'GPU'}: " + ", ".join(parts)


def progress_line(progress: Mapping[str, Any] | None, num_epochs: int | None) -> str:
    """`epoch 2/4 training: step 30/76, 5,100 tok/s, ETA 1m 12s`: where a run is."""
    if not progress:
        return ""
    phase = str(progress.get("phase") or "").replace("_", " ")
    epoch = progress.get("epoch")
    where = f"epoch {epoch}/{num_epochs or '?'} " if epoch else ""
    parts = []
    if progress.get("steps_per_epoch"):
        parts.append(f"step {progress.get('step', 0)}/{progress['steps_per_epoch']}")
    elif progress.get("step") is not None and phase == "training":
        parts.append(f"step {progress['step']}")
    if progress.get("tokens_per_sec"):
        parts.append(f"{progress['tokens_per_sec']:,.0f} tok/s")
    if progress.get("eta_seconds") is not None:
        parts.append(f"ETA {duration(progress['eta_seconds'])}")
    return f"{where}{phase}" + (f": {', '.join(parts)}" if parts else "")


def epoch_line(epoch: Mapping[str, Any], num_epochs: int | None) -> str:
    val = epoch.get("val") or {}
    line = (
        f"epoch {epoch['epoch']}/{num_epochs or '?'}  train loss {num(epoch['train']['loss'], '.4f')}"
        f"  val CE {num(val.get('ce_loss'), '.4f') or '-'}"
        f"  val loss {num(val.get('loss'), '.4f') or '-'}"
        f"  {num(epoch.get('tokens_per_sec'), ',.0f')} tok/s"
    )
    if epoch.get("duration") is not None:
        line += f"  {duration(epoch['duration'])}"
    return line


def smoke_note(base_presets: Iterable[str | None]) -> list[str]:
    """A line under a study or a comparison on a smoke-test base (micro): what it shows is
    noise, not evidence (none for any other base)."""
    smoke = sorted({name for name in base_presets if name in SMOKE_BASES})
    return [
        f"note: {name} is a smoke-test size: differences between its runs (~1e-5 nats) are "
        "noise, not evidence (tiny or small for a comparison)"
        for name in smoke
    ]


def stderr_line(text: str) -> None:
    print(text, file=sys.stderr)
