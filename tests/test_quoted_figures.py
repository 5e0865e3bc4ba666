"""Every figure README.md, docs/results.md and docs/distributed.md quote from a committed
JSON is read from that JSON here: a figure that differs from its source, in the document or
in the JSON, fails.

QUOTES is the table: (document, the quoted text with `{}` where each figure goes, the JSON
file(s), then each figure's path in the JSON and its format). A path is dotted keys, `[i]`
an index, `[key=value]` the list items whose key is that value, `a|b` several keys and `*`
every item (both give a list); a path that starts with `@view` reads a figure derived from
the JSON the way the report that first printed it derived it (VIEWS; the studies' figures
are scripts/study_tables.py's arithmetic on the runs, with today's moe_core.criteria). A
format is a format spec for one number (its minus sign printed as the documents print it,
U+2212) or a function of the value (a range, a ratio, a count). Whitespace is compared
collapsed, as markdown reads it.

A figure with no JSON behind it (the GPU's busy share from `nvidia-smi dmon`, a prose
estimate) is not here; every link from these documents to a JSON whose text holds a figure
must be (test_every_figure_linked_to_a_json_is_checked)."""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from moe_core.criteria import best_val_loss, generalisation_gap, throughput
from moe_core.statistics import paired_t_test
from scripts.study_tables import routing
from scripts.sweep_tables import pruner_saw, spearman
from tests.environment import ROOT

Format = str | Callable[[Any], str]

README, RESULTS, DISTRIBUTED = "README.md", "docs/results.md", "docs/distributed.md"
SMALL = "docs/results/small-3seed/experiment_results.json"
OPTIONS = "docs/results/options-3seed/experiment_results.json"
JITTER = "docs/results/options-3seed/jitter/experiment_results.json"
SWEEP = "docs/results/sweep-small/sweep_results.json"
MARGIN = "docs/results/sweep-small/margin/sweep_results.json"
LATEST = "benchmarks/results/latest.json"
SERVICE = "benchmarks/results/service.json"
RECOVERY = "benchmarks/results/recovery.json"
GPU = "benchmarks/results/gpu-NVIDIA-H200.json"
DISTRIBUTED_CPU = "benchmarks/results/distributed-cpu.json"


# ------------------------------------------------------------------------------- formats


def number(value: float, spec: str) -> str:
    """`value` by a format spec, with the typographic minus the documents use."""
    return format(value, spec).replace("-", "−")


def _flat(value: Any) -> list[float]:
    if isinstance(value, list):
        return [x for item in value for x in _flat(item)]
    return [value]


def span(spec: str, sep: str = "-", *, signed: bool = False) -> Callable[[Any], str]:
    """'low-high' by magnitude: the smallest and largest magnitudes (or, `signed`, the
    values themselves, in that order)."""

    def render(values: Any) -> str:
        xs = sorted(_flat(values), key=abs)
        low, high = (xs[0], xs[-1]) if signed else (abs(xs[0]), abs(xs[-1]))
        return f"{number(low, spec)}{sep}{number(high, spec)}"

    return render


def ratio(spec: str, *, excess: bool = False) -> Callable[[Any], str]:
    """The first value over the second (`excess`: less 1, as '12%' more)."""

    def render(values: Any) -> str:
        a, b = _flat(values)
        return number(a / b - (1 if excess else 0), spec)

    return render


def count(values: Any) -> str:
    return str(len(values))


def count_or_none(values: Any) -> str:
    return str(len(values)) if values else "none"


def one(value: Any) -> Any:
    """The figure a path read: a selector's list must have matched exactly one item."""
    if isinstance(value, list):
        assert len(value) == 1, f"{len(value)} values for one figure: {value}"
        return value[0]
    return value


def scaled(spec: str, factor: float, unit: str = "") -> Callable[[Any], str]:
    """One value times `factor`, then `unit`: seconds as minutes, tokens/s in millions."""
    return lambda value: number(one(value) * factor, spec) + unit


# --------------------------------------------------------------------------------- views


def _mean(values: list[float | None]) -> float | None:
    given = [v for v in values if v is not None]  # dense has no routing
    return statistics.fmean(given) if given else None


def _paired(study: dict[str, Any], against: str, measure: Callable) -> dict[str, Any]:
    """Each configuration's paired t-test against `against`, by seed: the report's "Paired
    t-tests" table, with the interval's half-width."""
    runs = study["runs"]
    tests = {}
    for name, group in runs.items():
        if name in ("dense", against):
            continue
        test = paired_t_test(
            [
                measure(r["metrics"]) - measure(a["metrics"])
                for r, a in zip(group, runs[against], strict=True)
                if r and a
            ]
        )
        tests[name] = {**test, "half_width": test["t_critical"] * test["se"]}
    return tests


def _final_layers(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The final model's routing over the validation set, per MoE layer (none for dense)."""
    history = run["metrics"].get("eval_expert_stats_history") or []
    return history[-1]["layers"] if history else []


def _means(study: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each configuration over its seeds: the report's "Means over seeds" and "Per seed"."""
    runs = study["runs"]
    out = {}
    for name, group in runs.items():
        pairs = [(r, d) for r, d in zip(group, runs["dense"], strict=True) if r and d]
        stats = [routing(r) for r, _ in pairs]
        out[name] = {
            "gap": _mean([generalisation_gap(r["metrics"]) for r, _ in pairs]),
            # the verdict's secondary: each seed's tokens/s over its dense run's, averaged
            "throughput_ratio": _mean(
                [throughput(r["metrics"]) / throughput(d["metrics"]) for r, d in pairs]
            ),
            "dropped": _mean([s["dropped"] for s in stats]),
            "z_loss": _mean([s["z_loss"] for s in stats]),
            "final_min_use": [s["final_min_use"] for s in stats],
            # the least used expert of each MoE layer of each seed's final model
            "layer_min_use": [layer["min_usage"] for r, _ in pairs for layer in _final_layers(r)],
        }
    return out


def _sweeps(doc: Any) -> list[dict[str, Any]]:
    return doc if isinstance(doc, list) else [doc]


def _complete(doc: Any) -> list[dict[str, Any]]:
    """The trials that finished, over every sweep given (both runs share their dense runs)."""
    return [t for sweep in _sweeps(doc) for t in sweep["trials"] if t["state"] == "complete"]


def _spearman(doc: Any, field: str) -> float | None:
    trials = _complete(doc)
    return spearman([t["params"][field] for t in trials], [t["objective"]["mean"] for t in trials])


def _pruned_by(doc: Any) -> list[float]:
    """How much worse than the median each pruned trial was when the pruner stopped it."""
    saw = [pruner_saw(t, sweep) for sweep in _sweeps(doc) for t in sweep["trials"]]
    return [s["val_ce"] - s["median"] for s in saw if s is not None]


def _gpu_step(doc: dict[str, Any], name: str) -> dict[str, float]:
    """A row of the gpu section per training step: its seconds (the row times an epoch of
    params.steps steps)."""
    row = one(read(doc, f"sections.gpu.rows[name={name}]"))
    variant = name.split(": ", 1)[1]
    return {"s": row["times_s"][variant]["median"] / row["params"]["steps"]}


def _on_nvlink(docs: list[dict[str, Any]], model: str, ep: str, step: str) -> dict[str, float]:
    """A projected 8-GPU layout's communication (the distributed JSON's projection of
    `model` at expert parallel `ep`) against one GPU's step of the same model (the gpu
    JSON's row `step`): as a share of that whole step, and of an eighth of it (each GPU's
    step if 8 split the work perfectly)."""
    distributed, gpu = docs
    row = one([r for r in distributed["sections"]["distributed"]["projection"]
               if r["params"]["model"] == model and r["params"]["expert_parallel"] == int(ep)])  # fmt: skip
    seconds, ranks = row["seconds_at_nvlink"]["total"], row["params"]["gpus"]
    whole = _gpu_step(gpu, step)["s"]
    return {"step_s": whole, "share_s": whole / ranks, "of_step": seconds / whole,
            "of_share": seconds / (whole / ranks)}  # fmt: skip


VIEWS: dict[str, Callable[..., Any]] = {
    "vs": lambda study, against: _paired(study, against, best_val_loss),
    "gap_vs": lambda study, against: _paired(study, against, generalisation_gap),
    "means": _means,
    "complete": _complete,
    "spearman": _spearman,
    "pruned_by": _pruned_by,
    "gpu_step": _gpu_step,
    "on_nvlink": _on_nvlink,
}


# ---------------------------------------------------------------------------------- paths

_VIEW = re.compile(r"@(\w+)(?:\(([^)]*)\))?")
_STEP = re.compile(r"\.?(?:\[(\d+)\]|\[([^=\]]+)=([^\]]*)\]|([^.\[]+))")


def read(doc: Any, path: str) -> Any:
    """The value at `path` (see the module's docstring); a list where the path fans out."""
    if path.startswith("@"):
        view = _VIEW.match(path)
        assert view, path
        args = [a.strip() for a in view[2].split(",")] if view[2] else []
        doc, path = VIEWS[view[1]](doc, *args), path[view.end() :]
    values, many = [doc], False
    for step in _STEP.finditer(path):
        index, key, wanted, name = step.groups()
        if index is not None:
            values = [v[int(index)] for v in values]
        elif key is not None:
            values = [item for v in values for item in v if str(item[key]) == wanted]
            many = True
        elif name == "*":
            values = [item for v in values for item in (v.values() if isinstance(v, dict) else v)]
            many = True
        elif "|" in name:
            values = [v[k] for v in values for k in name.split("|")]
            many = True
        else:
            values = [v[name] for v in values]
    return values if many else values[0]


def render(value: Any, fmt: Format) -> str:
    return fmt(value) if callable(fmt) else number(one(value), fmt)


# ---------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Quote:
    doc: str
    text: str
    source: str | tuple[str, ...]
    figures: tuple[tuple[str, Format], ...]

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else self.source


def q(doc: str, text: str, source: str | tuple[str, ...], *figures: tuple[str, Format]) -> Quote:
    return Quote(doc, text, source, figures)


# the rows of benchmark JSON the documents quote
STEP_SPEC = "sections.model_step.rows[name=spec: baseline MoE vs dense]"
SSE = "sections.service.rows[name=SSE fan-out (100 streams, one run)]"
SIGKILL = "sections.recovery.rows[name=SIGKILL to resume (heartbeat 60 s)]"
SIGTERM = "sections.recovery.rows[name=SIGTERM to handback]"
GPU_ROWS = "sections.gpu.rows"
STUDY_ENGINE = GPU_ROWS + "[name=the spec's study: python -m moe_core study --parallel 5]"
STUDY_SERVICE = GPU_ROWS + "[name=the spec's study: POST /studies, one worker of 5 slots]"
GRAPHS = GPU_ROWS + "[name=spec step: {} bf16+graphs]"
FOUR_RUNS = GPU_ROWS + "[name=4 run(s) per GPU]"
DIST_ROWS = "sections.distributed.rows"
DIST_LAYOUTS = ("1 rank (torchrun)", "2 ranks, data parallel", "2 ranks, expert parallel 2",
                "4 ranks, 2 x 2 (expert parallel 2)")  # fmt: skip
DIST_LINK = "../benchmarks/results/distributed-cpu.json"
GPU_LINK = "../benchmarks/results/gpu-NVIDIA-H200.json"
BOTH_LINK = "../benchmarks/results/distributed-cpu.json"  # a ratio of the two JSONs
SPEC_EP8 = "sections.distributed.projection[name=spec top2: 8 ranks, expert parallel 8]"
# the bytes a GPU puts on NVLink per step: the all-to-all's off-rank part and the ring's
SPEC_EP8_TOTAL = (f"[0].{SPEC_EP8}.bytes_per_step.all_to_all_off_rank|ddp_all_reduce_ring"
                  "|expert_all_reduce_ring", lambda xs: number(sum(xs) * 1e-6, ".1f"))  # fmt: skip

QUOTES = [
    # ---- README.md: the headline results
    q(README, "**MoE against dense, {} seeds on {} CPU cores**",
      SMALL, ("seeds", count), ("threads", "d")),
    q(README, "[**{} ± {}**](docs/results/small-3seed/experiment_results.json) nats for top-1",
      SMALL, ("@vs(dense).baseline.mean", "+.3f"), ("@vs(dense).baseline.se", ".3f")),
    q(README, "[**{} ± {}**](docs/results/small-3seed/experiment_results.json) for top-2",
      SMALL, ("@vs(dense).top2.mean", "+.3f"), ("@vs(dense).top2.se", ".3f")),
    q(README, "([p = {} and {}](docs/results/small-3seed/experiment_results.json))",
      SMALL, ("@vs(dense).baseline.p_value", ".3f"), ("@vs(dense).top2.p_value", ".3f")),
    q(README, "[{}x and {}x](docs/results/small-3seed/experiment_results.json) the dense tokens/s",
      SMALL, ("@means.baseline.throughput_ratio", ".2f"), ("@means.top2.throughput_ratio", ".2f")),
    q(README, "[**{} ± {}**](docs/results/options-3seed/experiment_results.json) nats "
      "([p = {}](docs/results/options-3seed/experiment_results.json)); one shared expert",
      OPTIONS, ("@vs(baseline).fine_grained.mean", "+.3f"),
      ("@vs(baseline).fine_grained.se", ".3f"), ("@vs(baseline).fine_grained.p_value", ".3f")),
    q(README, "worse, [**{} ± {}**](docs/results/options-3seed/experiment_results.json) "
      "([p = {}](docs/results/options-3seed/experiment_results.json))",
      OPTIONS, ("@vs(baseline).shared_expert.mean", "+.3f"),
      ("@vs(baseline).shared_expert.se", ".3f"), ("@vs(baseline).shared_expert.p_value", ".3f")),
    q(README, "all {} configurations that finished beat dense in both seeds, by [{} nats]",
      (SWEEP, MARGIN), ("@complete", count), ("@complete.*.objective.mean", span(".3f"))),
    q(README, "more capacity looks better (ρ = {})",
      (SWEEP, MARGIN), ("@spearman(capacity_factor)", "+.2f")),
    q(README, "stopped [{} of {} trials](docs/results/sweep-small/sweep_results.json) on noise "
      "of {} nats", SWEEP, ("trials[state=pruned]", count), ("trials", count),
      ("@pruned_by", span(".3f"))),
    q(README, "with `prune_margin: {}` a second run pruned {}.",
      MARGIN, ("sweep.prune_margin", ".2f"), ("trials[state=pruned]", count_or_none)),
    q(README, "[{}x](benchmarks/results/latest.json) the dense tokens/s",
      LATEST, (STEP_SPEC + ".ratio.median", ".2f")),
    q(README, "{} event streams following one run cost the API "
      "[{}](benchmarks/results/service.json) of a core",
      SERVICE, (SSE + ".params.streams", "d"), (SSE + ".cpu_fraction_of_core", ".3f")),
    q(README, "[{} s](benchmarks/results/recovery.json) at the default {} s heartbeat timeout",
      RECOVERY, (SIGKILL + ".seconds.median", ".1f"), (SIGKILL + ".params.heartbeat_timeout", ".0f")),
    q(README, "hands its run back in [{} s](benchmarks/results/recovery.json)",
      RECOVERY, (SIGTERM + ".seconds.median", ".2f")),
    q(README, "whole study in {} s ({} s through `POST /studies`)",
      GPU, (STUDY_ENGINE + ".seconds.median", ".0f"), (STUDY_SERVICE + ".seconds.median", ".0f")),
    q(README, "dense trains {} tokens/s and top-1 and top-2 {}x of it",
      GPU, (GRAPHS.format("dense") + ".tokens_per_s.dense bf16+graphs", scaled(".2f", 1e-6, "M")),
      # top-1 and top-2 round to the one figure quoted for both
      (GRAPHS.format("baseline") + ".ratio.median", ".2f")),
    q(README, "top-1 and top-2 {}x of it", GPU, (GRAPHS.format("top2") + ".ratio.median", ".2f")),
    q(README, "{} runs on one GPU train {}x one run's tokens/s",
      GPU, (FOUR_RUNS + ".params.runs", "d"), (FOUR_RUNS + ".speedup_vs_one", ".1f")),
    # ---- docs/results.md: dense, baseline and top2
    q(RESULTS, "with {} seeds, significant at 95% asks for {} standard errors",
      SMALL, ("seeds", count), ("@vs(dense).baseline.t_critical", ".2f")),
    q(RESULTS, "took [{} minutes](results/small-3seed/experiment_results.json)",
      SMALL, ("seconds", scaled(".1f", 1 / 60))),
    q(RESULTS, "**[{} ± {}](results/small-3seed/experiment_results.json)** nats for `baseline`",
      SMALL, ("@vs(dense).baseline.mean", "+.3f"), ("@vs(dense).baseline.se", ".3f")),
    q(RESULTS, "**[{} ± {}](results/small-3seed/experiment_results.json)** for `top2`",
      SMALL, ("@vs(dense).top2.mean", "+.3f"), ("@vs(dense).top2.se", ".3f")),
    q(RESULTS, "[{} to {}, p = {}, and {} to {}, p = {}](results/small-3seed/experiment_results.json)",
      SMALL, ("@vs(dense).baseline.ci_low", "+.3f"), ("@vs(dense).baseline.ci_high", "+.3f"),
      ("@vs(dense).baseline.p_value", ".3f"), ("@vs(dense).top2.ci_low", "+.3f"),
      ("@vs(dense).top2.ci_high", "+.3f"), ("@vs(dense).top2.p_value", ".3f")),
    q(RESULTS, "[{} and {} parameters per token against dense's {} ({} in all)]"
      "(results/small-3seed/experiment_results.json)",
      SMALL, ("experiments.baseline.active_params", ",d"), ("experiments.top2.active_params", ",d"),
      ("dense.active_params", ",d"), ("experiments.baseline.params", ",d")),
    q(RESULTS, "[{}x and {}x the dense tokens/s](results/small-3seed/experiment_results.json)",
      SMALL, ("@means.baseline.throughput_ratio", ".2f"), ("@means.top2.throughput_ratio", ".2f")),
    q(RESULTS, "[eval-mode gap {} and {} against {}; significant, p = {} and {}]"
      "(results/small-3seed/experiment_results.json)",
      SMALL, ("@means.baseline.gap", ".3f"), ("@means.top2.gap", ".3f"), ("@means.dense.gap", ".3f"),
      ("@gap_vs(dense).baseline.p_value", ".3f"), ("@gap_vs(dense).top2.p_value", ".3f")),
    q(RESULTS, "[{}%](results/small-3seed/experiment_results.json) of the validation assignments",
      SMALL, ("@means.baseline|top2.layer_min_use", span(".1f"))),
    # "about 0.05 nats": both configurations' half-widths round to it
    q(RESULTS, "about [{} nats](results/small-3seed/experiment_results.json) to be significant",
      SMALL, ("@vs(dense).baseline.half_width", ".2f")),
    q(RESULTS, "about [{} nats](results/small-3seed/experiment_results.json) to be significant",
      SMALL, ("@vs(dense).top2.half_width", ".2f")),
    q(RESULTS, "(the 95% interval's half-width, {} standard errors)",
      SMALL, ("@vs(dense).baseline.t_critical", ".2f")),
    # ---- docs/results.md: the routing options
    q(RESULTS, "[{} runs in {} minutes](results/options-3seed/experiment_results.json)",
      OPTIONS, ("runs.*.*", count), ("seconds", scaled(".0f", 1 / 60))),
    q(RESULTS, "([{} nats](results/options-3seed/experiment_results.json))",
      OPTIONS, ("@vs(dense).*.mean", span("+.3f", " to ", signed=True))),
    q(RESULTS, "[p = {}; the baseline p = {}, the others {}](results/options-3seed/experiment_results.json)",
      OPTIONS, ("@vs(dense).fine_grained.p_value", ".3f"), ("@vs(dense).baseline.p_value", ".4f"),
      ("@vs(dense).zloss|aux_free|shared_expert|dropless.p_value", span("#.2g"))),
    q(RESULTS, "**[{} ± {}](results/options-3seed/experiment_results.json)** nats (95% interval "
      "[{} to {}, p = {}](results/options-3seed/experiment_results.json))",
      OPTIONS, ("@vs(baseline).fine_grained.mean", "+.3f"), ("@vs(baseline).fine_grained.se", ".3f"),
      ("@vs(baseline).fine_grained.ci_low", "+.3f"), ("@vs(baseline).fine_grained.ci_high", "+.3f"),
      ("@vs(baseline).fine_grained.p_value", ".3f")),
    *[
        q(RESULTS, f"| `{name}` | {bold}[{{}} ± {{}}, p = {{}}]({link}){bold} |",
          source, (f"@vs(baseline).{name}.mean", "+.3f"), (f"@vs(baseline).{name}.se", ".3f"),
          (f"@vs(baseline).{name}.p_value", ".2f" if name != "shared_expert" else ".3f"))
        for name, bold, source, link in [
            ("dropless", "", OPTIONS, "results/options-3seed/experiment_results.json"),
            ("zloss", "", OPTIONS, "results/options-3seed/experiment_results.json"),
            ("aux_free", "", OPTIONS, "results/options-3seed/experiment_results.json"),
            ("shared_expert", "**", OPTIONS, "results/options-3seed/experiment_results.json"),
            ("jitter", "", JITTER, "results/options-3seed/jitter/experiment_results.json"),
        ]
    ],
    q(RESULTS, "mean squared log-sum-exp [{}x](results/options-3seed/experiment_results.json)",
      OPTIONS, ("@means.baseline|zloss.z_loss", ratio(".0f"))),
    q(RESULTS, "([{} against {}](results/options-3seed/experiment_results.json)) with a {}x "
      "smaller balance loss", OPTIONS, ("@means.aux_free.dropped", ".2%"),
      ("@means.baseline.dropped", ".2%"),
      ("runs.baseline|aux_free[0].config.aux_weight", ratio(".0f"))),
    q(RESULTS, "worse, at [{}](results/options-3seed/experiment_results.json) more parameters per "
      "token", OPTIONS,
      ("experiments.shared_expert|baseline.active_params", ratio(".0%", excess=True))),
    q(RESULTS, "`zloss` by one expert at [{}% in one seed](results/options-3seed/experiment_results.json)",
      OPTIONS, ("@means.zloss.final_min_use", lambda xs: number(min(xs), ".1f"))),
    # ---- docs/distributed.md: what the ranks send each other
    q(DISTRIBUTED, "run [{} at commit {}](../benchmarks/results/distributed-cpu.json) on this "
      "project's VM ({}, {} cores, gloo, one thread per process), with other sessions' test "
      "suites running beside it: the load average was [{} at the start and {} at the end]"
      "(../benchmarks/results/distributed-cpu.json)", DISTRIBUTED_CPU,
      ("environment.date", lambda d: d[:10]), ("environment.commit", str),
      ("environment.device_name", str), ("environment.cpu_count", "d"),
      ("environment.load_avg_at_start[0]", ".1f"),
      ("sections.distributed.load_avg_at_end[0]", ".1f")),
    *[
        q(DISTRIBUTED, f"| {size} | `{preset}` | {layout} | [{{}} ms]({DIST_LINK}) | "
          f"[{{}} ms]({DIST_LINK}) | [{{}}]({DIST_LINK}) | [{{}} ({{}})]({DIST_LINK}) | "
          f"[{{}}]({DIST_LINK}) |", DISTRIBUTED_CPU,
          (f"{row}.times_s.one process.median", scaled(".1f", 1e3)),
          (f"{row}.times_s.{layout}.median", scaled(".1f", 1e3)),
          (f"{row}.ratio.median", ".2f"),
          (f"{row}.bytes_per_step.all_to_all", scaled(".3f", 1e-6)),
          (f"{row}.bytes_per_step.all_to_all_off_rank", scaled(".3f", 1e-6)),
          (f"{row}.bytes_per_step.all_reduce", scaled(".3f", 1e-6)))
        for size in ("micro", "small") for preset in ("top2", "dropless")
        for layout in DIST_LAYOUTS
        for row in [f"{DIST_ROWS}[name={size} {preset}: {layout}]"]
    ],
    q(DISTRIBUTED, "[{} collectives a step](../benchmarks/results/distributed-cpu.json)",
      DISTRIBUTED_CPU, (f"{DIST_ROWS}[name=small top2: 2 ranks, expert parallel 2]"
                        ".bytes_per_step.calls", lambda c: str(sum(one(c).values())))),
    *[
        q(DISTRIBUTED, f"| {model} | {layout} | [{{}} MB]({DIST_LINK}) | [{{}} MB]({DIST_LINK}) "
          f"| [{{}} ms]({DIST_LINK}) | [{{}} ms]({GPU_LINK}) | [{{}}]({BOTH_LINK}) |",
          (DISTRIBUTED_CPU, GPU),
          (f"[0].{proj}.bytes_per_step.all_to_all_off_rank", scaled(".1f", 1e-6)),
          (f"[0].{proj}.bytes_per_step.ddp_all_reduce_ring|expert_all_reduce_ring",
           lambda xs: number(sum(xs) * 1e-6, ".1f")),
          (f"[0].{proj}.seconds_at_nvlink.total", scaled(".2f", 1e3)),
          (f"@on_nvlink({name},{ep},{step}).share_s", scaled(".2f", 1e3)),
          (f"@on_nvlink({name},{ep},{step}).of_share", ".0%"))
        for model, name, step in (("the spec's", "spec", "spec step: top2 bf16+graphs"),
                                  ("GPU-sized", "GPU-sized", "GPU-sized: top2 bf16+graphs"))
        for layout, ep in (("expert parallel 8", 8), ("data parallel 8", 1))
        for proj in [f"sections.distributed.projection[name={name} top2: 8 ranks, "
                     + ("expert parallel 8]" if ep == 8 else "data parallel]")]
    ],
    q(DISTRIBUTED, "The arithmetic of the first row: {} MB + {} MB = {} MB a step per GPU; {} MB / "
      "450 GB/s = [{} ms](../benchmarks/results/distributed-cpu.json), against one H200's "
      "[{} ms](../benchmarks/results/gpu-NVIDIA-H200.json) / 8 = {} ms of work per GPU: "
      "[{}](../benchmarks/results/distributed-cpu.json).", (DISTRIBUTED_CPU, GPU),
      (f"[0].{SPEC_EP8}.bytes_per_step.all_to_all_off_rank", scaled(".1f", 1e-6)),
      (f"[0].{SPEC_EP8}.bytes_per_step.ddp_all_reduce_ring|expert_all_reduce_ring",
       lambda xs: number(sum(xs) * 1e-6, ".1f")),
      SPEC_EP8_TOTAL, SPEC_EP8_TOTAL,
      (f"[0].{SPEC_EP8}.seconds_at_nvlink.total", scaled(".2f", 1e3)),
      ("@on_nvlink(spec,8,spec step: top2 bf16+graphs).step_s", scaled(".2f", 1e3)),
      ("@on_nvlink(spec,8,spec step: top2 bf16+graphs).share_s", scaled(".2f", 1e3)),
      ("@on_nvlink(spec,8,spec step: top2 bf16+graphs).of_share", ".0%")),
    q(DISTRIBUTED, "one H200 trains a step of the spec's top-2 model in "
      "[{} ms](../benchmarks/results/gpu-NVIDIA-H200.json) and of the GPU-sized one in "
      "[{} ms](../benchmarks/results/gpu-NVIDIA-H200.json)", GPU,
      ("@gpu_step(spec step: top2 bf16+graphs).s", scaled(".2f", 1e3)),
      ("@gpu_step(GPU-sized: top2 bf16+graphs).s", scaled(".1f", 1e3))),
]  # fmt: skip


# ---------------------------------------------------------------------------------- check


def _collapsed(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def rendered(quote: Quote, root: Path) -> str:
    docs = [json.loads((root / source).read_text()) for source in quote.sources]
    doc = docs[0] if len(docs) == 1 else docs
    return quote.text.format(*(render(read(doc, path), fmt) for path, fmt in quote.figures))


def stale(root: Path) -> list[str]:
    """Each quote whose figures, read from its JSON, are not in its document as quoted."""
    texts = {doc: _collapsed((root / doc).read_text()) for doc in {q.doc for q in QUOTES}}
    return [
        f"{quote.doc} lacks {expected!r} (from {', '.join(quote.sources)})"
        for quote in QUOTES
        if (expected := _collapsed(rendered(quote, root))) not in texts[quote.doc]
    ]


def test_every_quoted_figure_is_its_jsons():
    assert stale(ROOT) == []


# [text](target.json), the text holding a figure (a digit) and not naming a file
_JSON_LINK = re.compile(r"\[([^\[\]]*\d[^\[\]]*)\]\(([^)\s]+\.json)\)")


@pytest.mark.parametrize("doc", [README, RESULTS, DISTRIBUTED])
def test_every_figure_linked_to_a_json_is_checked(doc):
    quoted = " ".join(_collapsed(rendered(q, ROOT)) for q in QUOTES if q.doc == doc)
    links = [
        _collapsed(m[0])
        for m in _JSON_LINK.finditer((ROOT / doc).read_text())
        if ".json" not in m[1]
    ]
    assert links
    assert [link for link in links if link not in quoted] == []


@pytest.mark.parametrize("quote", QUOTES, ids=lambda q: f"{q.doc}:{q.text[:40]}")
def test_a_quotes_links_point_at_its_own_json(quote):
    base = (ROOT / quote.doc).parent
    linked = {
        (base / target).resolve().relative_to(ROOT).as_posix()
        for target in re.findall(r"\]\(([^)\s]+\.json)\)", quote.text)
    }
    assert linked <= set(quote.sources)


def _copy(tmp_path: Path) -> Path:
    """The documents and JSONs of QUOTES, in a scratch tree."""
    for path in {q.doc for q in QUOTES} | {s for q in QUOTES for s in q.sources}:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / path, tmp_path / path)
    return tmp_path


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_a_figure_edited_in_a_document_is_stale(tmp_path):
    root = _copy(tmp_path)
    readme = root / README
    readme.write_text(readme.read_text().replace("[64.8 s]", "[64.9 s]"))
    results = root / RESULTS
    results.write_text(results.read_text().replace("[33.6 minutes]", "[33.7 minutes]"))
    assert [line.split(" lacks ")[0] for line in stale(root)] == [README, RESULTS]


def test_a_figure_changed_in_its_json_is_stale(tmp_path):
    root = _copy(tmp_path)

    def slower_handback(data: dict[str, Any]) -> None:
        row = next(
            r for r in data["sections"]["recovery"]["rows"] if r["name"] == "SIGTERM to handback"
        )
        row["seconds"]["median"] = 0.25

    def another_seed(data: dict[str, Any]) -> None:
        # one seed's top2 run 0.01 nats better: its Δ, SE, interval and p all move
        data["runs"]["top2"][0]["metrics"]["best_val_ce_loss"] -= 0.01

    _edit_json(root / RECOVERY, slower_handback)
    _edit_json(root / SMALL, another_seed)
    found = stale(root)
    assert any("hands its run back in [0.25 s]" in line for line in found), found
    assert sum(SMALL in line for line in found) >= 4, found
    assert all(RECOVERY in line or SMALL in line for line in found), found


def test_paths_select_fan_out_and_refuse_an_ambiguous_figure():
    doc = {"rows": [{"name": "a", "x": 1.5}, {"name": "b", "x": -2.25}], "n": {"p": 3, "q": 4}}
    assert read(doc, "rows[name=b].x") == [-2.25]
    assert read(doc, "rows[1].x") == -2.25
    assert read(doc, "rows.*.x") == [1.5, -2.25]
    assert read(doc, "n.q|p") == [4, 3]
    assert render(read(doc, "rows[name=b].x"), "+.2f") == "−2.25"
    assert span(".1f")(read(doc, "rows.*.x")) == "1.5-2.2"
    assert ratio(".1f")([3, 4]) == "0.8"
    with pytest.raises(AssertionError, match="2 values for one figure"):
        render(read(doc, "rows.*.x"), ".1f")
    assert math.isclose(float(render(read(doc, "n.p"), ".1f")), 3.0)
