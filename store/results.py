"""A run's results in the store's columns and back: the epoch record the Trainer hands to
on_epoch_end as rows and back as the API shows them (store.leases writes them), and the
result run_single_experiment returns as an experiment's columns and back. These are the
only places that know how, in both directions."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from moe_core import records
from store.models import (
    EpochMetrics,
    Experiment,
    ExpertStats,
    StatsKind,
    utcnow,
)

# The epoch record's keys decide the columns (moe_core.records): its loss groups become
# <group>_<loss> columns of epoch_metrics, its scalars columns of their own names, each
# layer's routing an expert_stats row. max_entropy is not kept: it is ln(experts).
LOSS_GROUPS = ("train", "train_eval", "val")
EPOCH_SCALARS = tuple(
    key for key in records.keys(records.EpochFigures)
    if key not in ("epoch", *LOSS_GROUPS, "expert_stats", "eval_expert_stats")
)  # fmt: skip
LAYER_COLUMNS = tuple(key for key in records.keys(records.LayerRouting) if key != "max_entropy")
EVAL_LAYER_COLUMNS = tuple(
    key for key in records.keys(records.EvalLayerRouting) if key != "max_entropy"
)
KINDS = ((StatsKind.train, "expert_stats", LAYER_COLUMNS),
         (StatsKind.eval, "eval_expert_stats", EVAL_LAYER_COLUMNS))  # fmt: skip


def _loss_columns(group: str) -> tuple[str, ...]:
    losses = records.TrainEvalLoss if group == "train_eval" else records.Losses
    return tuple(f"{group}_{key}" for key in records.keys(losses))


def epoch_rows(
    experiment_id: int, record: records.EpochRecord
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The rows that keep an epoch record: its epoch_metrics row, and an expert_stats row per
    MoE layer and kind (training, evaluation). store.leases.record_epoch writes them."""
    epoch = record["epoch"]
    # Read by the key names that the record's own declaration gives (records.keys)
    fields: Mapping[str, Any] = record
    metrics_row: dict[str, Any] = {"experiment_id": experiment_id, "epoch": epoch,
                                   "recorded_at": utcnow()}  # fmt: skip
    for group in LOSS_GROUPS:
        losses = fields.get(group) or {}
        for column in _loss_columns(group):
            metrics_row[column] = losses.get(column.removeprefix(f"{group}_"))
    metrics_row.update({key: fields.get(key) for key in EPOCH_SCALARS})
    # What the table requires, a record must have (a KeyError writes nothing); a figure
    # that records before it lack is null.
    table = ExpertStats.__table__.c
    stats_rows = [
        {
            "experiment_id": experiment_id,
            "epoch": epoch,
            "kind": kind,
            **{
                column: stats.get(column) if table[column].nullable else stats[column]
                for column in LAYER_COLUMNS
            },
            "usage": list(stats["usage"]),
        }
        for kind, key, _ in KINDS
        for stats in fields.get(key) or []
    ]
    for row in stats_rows:  # a training-only figure in an evaluation row would be misread
        if row["kind"] == StatsKind.eval:
            row.update(dict.fromkeys(set(LAYER_COLUMNS) - set(EVAL_LAYER_COLUMNS)))
    return metrics_row, stats_rows


def epoch_records(*, session: Session, experiment_id: int) -> list[records.EpochFigures]:
    """Finished epochs in order, as the API shows them (moe_core.records.EpochFigures).

    Read as plain rows in two queries, not ORM objects: dashboards poll this while runs
    go, and loading objects and validating them again cost ~8x the queries themselves.
    """
    m, s = EpochMetrics.__table__.c, ExpertStats.__table__.c
    stats: dict[tuple[int, str], list[dict[str, Any]]] = {}
    columns = {kind: names for kind, _, names in KINDS}
    # One fetch, not a round of fetchone per row.
    stats_rows = session.execute(
        select(s.epoch, s.kind, *(s[name] for name in LAYER_COLUMNS))
        .where(s.experiment_id == experiment_id)
        .order_by(s.epoch, s.kind, s.layer)
    ).all()  # fmt: skip
    for r in stats_rows:
        row = {name: _read(getattr(r, name)) for name in columns[r.kind]}
        row["max_entropy"] = math.log(len(r.usage))
        stats.setdefault((r.epoch, r.kind), []).append(row)
    groups = {group: _loss_columns(group) for group in LOSS_GROUPS}
    rows = session.execute(
        select(m.epoch, *(m[c] for names in groups.values() for c in names),
               *(m[name] for name in EPOCH_SCALARS))
        .where(m.experiment_id == experiment_id)
        .order_by(m.epoch)
    ).all()  # fmt: skip
    epochs = []
    for r in rows:
        epoch: dict[str, Any] = {"epoch": r.epoch}
        for group, names in groups.items():
            values = {c.removeprefix(f"{group}_"): finite(getattr(r, c)) for c in names}
            # train always has its losses; train_eval and val are null when not evaluated
            epoch[group] = values if group == "train" or getattr(r, names[-1]) is not None else None
        epoch.update({name: getattr(r, name) for name in EPOCH_SCALARS})
        for kind, key, _ in KINDS:
            epoch[key] = stats.get((r.epoch, kind), [])
        epochs.append(epoch)
    # Built from the columns, which follow the record's keys (tests/moe_core/test_records.py)
    return cast(list[records.EpochFigures], epochs)


def _read(value: Any) -> Any:
    return finite(value) if isinstance(value, float) else value


def result_columns(result: dict[str, Any]) -> dict[str, Any]:
    """The experiment columns that store `result` (docs/verdicts-contract.md)."""
    metrics = json_safe(result.get("metrics") or {})
    test = result.get("test")
    evaluation = result.get("evaluation")
    if test is not None:  # the columns hold its losses; the JSON the rest
        evaluation = {**(evaluation or {}), "test_epoch": test.get("epoch"),
                      "test_aux_loss": test.get("aux_loss")}  # fmt: skip
    if result.get("together") is not None:  # trained as one stack with its seed siblings
        evaluation = {**(evaluation or {}), "together": result["together"]}
    values: dict[str, Any] = {
        "metrics": metrics,
        "params": result.get("params"),
        "active_params": result.get("active_params"),
        "test_loss": finite(test.get("loss")) if test else None,
        "test_ce_loss": finite(test.get("ce_loss")) if test else None,
        "evaluation": json_safe(evaluation),
    }
    if result.get("precision") is not None:  # fixed when it started; the run's own word
        values["precision"] = result["precision"]
    if isinstance(metrics, dict):
        # Prefer the engine's final word; the per-epoch values stand otherwise.
        for key in ("best_val_loss", "best_val_ce_loss"):
            if metrics.get(key) is not None:
                values[key] = metrics[key]
        if "stopped_early" in metrics:
            values["stopped_early"] = bool(metrics["stopped_early"])
    return values


def stored_result(run: Experiment) -> dict[str, Any]:
    """The result run_single_experiment returned for `run`, rebuilt from its row: what the
    API serves and what moe_core.criteria judges. Runs stored before a field existed have
    it as None."""
    evaluation = dict(run.evaluation) if run.evaluation is not None else None
    test = None
    together = evaluation.pop("together", None) if evaluation is not None else None
    if evaluation is not None and "test_epoch" in evaluation:
        test = {
            "loss": run.test_loss,
            "ce_loss": run.test_ce_loss,
            "aux_loss": evaluation.pop("test_aux_loss", None),
            "epoch": evaluation.pop("test_epoch"),
        }
    return {
        "config": run.config,
        "metrics": run.metrics or {},
        "params": run.params or 0,
        "active_params": run.active_params,
        "test": test,
        "evaluation": evaluation,
        "base": run.base,  # what the criteria check a baseline's comparability on
        "seed": run.base.get("seed"),
        "device": run.device,
        "precision": run.precision,
        "compile": run.base.get("compile", "off"),
        # its ranks, as the engine's result records them (runs before gpus existed: one)
        "parallel": {
            "gpus": run.base.get("gpus", 1),
            "expert_parallel": run.base.get("expert_parallel", 1),
        },  # fmt: skip
        "together": together,
    }


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """JSON as Postgres accepts it: NaN and infinities (e.g. an unset best loss) become null."""
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
