"""How `moe-lab compare` and `show` lay runs side by side: each run's row (a plain dict, so
`--csv` and `--json` print the numbers the table shows), the table, its notes, and the
hyper-parameters of one run or those that differ between several."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from moe_core import comparable
from moe_core.presets import DENSE_UNUSED
from moe_lab.client import FINISHED
from moe_lab.render import kind, num, pct, signed, table

# --------------------------------------------------------------------------- compare


def final_eval_stats(epochs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The routing of the last evaluated epoch over the validation set (empty: dense, or
    never evaluated)."""
    for epoch in reversed(epochs):
        if epoch.get("eval_expert_stats"):
            return epoch["eval_expert_stats"]
    return []


def _given(layers: Sequence[Mapping[str, Any]] | None, key: str) -> list[float]:
    """`key` of each layer that has it (runs from before a statistic existed lack it)."""
    return [layer[key] for layer in layers or [] if layer.get(key) is not None]


# compare's columns, in compare_rows' order (compare --csv's header)
COMPARE_COLUMNS = ("id", "name", "kind", "status", "val_ce", "perplexity", "tokens_per_sec",
                   "min_usage_pct", "drop_pct", "imbalance", "delta_vs_dense", "dense_id",
                   "dense_comparable", "delta_provisional")  # fmt: skip


def compare_rows(
    runs: Sequence[Mapping[str, Any]],
    epochs_of: Mapping[int, Sequence[Mapping[str, Any]]],
    baselines: Mapping[int, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One row per run. `baselines` holds every run named by a baseline_id; Δ vs dense is
    best val CE minus the baseline's, else minus the one dense run among `runs`, and none
    when that dense run's cross-entropy does not compare (moe_core.comparable)."""
    dense_given = [run for run in runs if run.get("dense")]
    rows = []
    for run in runs:
        epochs = epochs_of.get(run["id"], [])
        ce = run.get("best_val_ce_loss")
        speeds = [e["tokens_per_sec"] for e in epochs if e.get("tokens_per_sec") is not None]
        evaluated = final_eval_stats(epochs)
        trained = epochs[-1].get("expert_stats") if epochs else None
        drops, loads = _given(trained, "dropped"), _given(trained, "imbalance")
        reference = None
        if run.get("baseline_id") is not None:
            reference = baselines.get(run["baseline_id"])
        elif not run.get("dense") and len(dense_given) == 1:
            reference = dense_given[0]
        # a dense run of another base (text, tokens, blocks) is no reference: no Δ at all
        incomparable = reference is not None and bool(
            comparable.differences(run.get("base") or {}, reference.get("base") or {})
        )
        ref_ce = reference.get("best_val_ce_loss") if reference and not incomparable else None
        delta = None if ce is None or ref_ce is None else ce - ref_ce
        # either best val CE may still fall while its run goes on: the Δ is not yet its last
        unfinished = [r for r in (run, reference) if r and r["status"] not in FINISHED]
        rows.append(
            {
                "id": run["id"],
                "name": run["name"],
                "kind": kind(run),
                "status": run["status"],
                "val_ce": ce,
                "perplexity": math.exp(ce) if ce is not None and ce < 700 else None,
                "tokens_per_sec": sum(speeds) / len(speeds) if speeds else None,
                "min_usage_pct": min(layer["min_usage"] for layer in evaluated)
                if evaluated
                else None,
                "drop_pct": 100 * max(drops) if drops else None,
                "imbalance": max(loads) if loads else None,
                "delta_vs_dense": delta,
                "dense_id": reference["id"] if reference else None,
                "dense_comparable": not incomparable,
                "delta_provisional": delta is not None and bool(unfinished),
            }
        )
    return rows


def compare_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """compare's rows, each run's status beside it; the Δ of an unfinished run (or of one
    whose dense run is unfinished) is marked * (provisional: compare_notes says so)."""
    numbers = ("id", "val CE", "perplexity", "tokens/s", "min usage", "drop rate", "imbalance",
               "Δ vs dense", "dense")  # fmt: skip
    out = table("id", "name", "status", *numbers[1:], right=numbers)
    for row in rows:
        delta = signed(row["delta_vs_dense"], ".4f")
        out.add_row(
            str(row["id"]),
            row["name"],
            row["status"],
            num(row["val_ce"], ".4f"),
            num(row["perplexity"], ".1f"),
            num(row["tokens_per_sec"], ",.0f"),
            pct(row["min_usage_pct"]),
            pct(row["drop_pct"]),
            num(row["imbalance"], ".2f"),
            delta + "*" if delta and row.get("delta_provisional") else delta,
            str(row["dense_id"])
            if row["delta_vs_dense"] is not None
            else f"{row['dense_id']}: another base"
            if not row.get("dense_comparable", True)
            else "",
        )
    return out


def compare_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """What compare's table needs said under it: which Δ are provisional."""
    provisional = [str(row["id"]) for row in rows if row.get("delta_provisional")]
    if not provisional:
        return []
    runs = f"run {provisional[0]}" if len(provisional) == 1 else f"runs {', '.join(provisional)}"
    return [f"*: provisional ({runs}): the run or its dense run has not finished, and its best "
            "val CE may still fall"]  # fmt: skip


# --------------------------------------------------------------------------- verdicts


def _fields(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run's resolved configs as `config.F` and `base.F`, every field it trains with: a
    dense run's routing fields (moe_core.config.DENSE_UNUSED) configure nothing, left out."""
    fields = {
        f"{section}.{key}": value
        for section in ("config", "base")
        for key, value in (run.get(section) or {}).items()
    }
    if run.get("dense"):
        fields = {name: value for name, value in fields.items() if name not in DENSE_UNUSED}
    return fields


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def hyperparameters_table(run: Mapping[str, Any]) -> Table:
    """The run's resolved configs, every field it was trained with (a dense run has no
    router: its routing fields are not among them)."""
    title = "hyper-parameters" + (" (a dense run: no routing)" if run.get("dense") else "")
    out = table("hyper-parameter", "value", title=title, wrap=("value",))
    for name, value in _fields(run).items():
        out.add_row(name, _text(value))
    return out


def differences(runs: Sequence[Mapping[str, Any]]) -> Table | None:
    """The fields in which the runs that have them differ, one column a run (none: None).
    A dense run's routing fields are not its own (it has no router): blank, and never the
    reason a field is listed."""
    fields = [_fields(run) for run in runs]
    names = list(dict.fromkeys(name for each in fields for name in each))
    # config.name is the run's name, in the columns' headers already
    differing = [n for n in names if n != "config.name"
                 and len({_text(f[n]) for f in fields if n in f}) > 1]  # fmt: skip
    if not differing:
        return None
    columns = [f"{run['name']} #{run['id']}" for run in runs]
    out = table("hyper-parameter", *columns, title="hyper-parameters that differ")
    for name in differing:
        out.add_row(name, *(_text(f[name]) if name in f else "" for f in fields))
    return out
