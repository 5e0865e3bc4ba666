"""Small factories of store test data: runs, epoch records, claims, counts."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from moe_core.config import base_config, get_experiment_configs
from store import runs
from store.db import session_scope
from store.models import EpochMetrics, ExpertStats, utcnow


def new_experiment(database: str, name: str = "t") -> int:
    base = base_config("micro")
    with session_scope(database) as session:
        experiment = runs.create_experiment(
            session=session, name=name, config=get_experiment_configs(base)["baseline"], base=base
        )
        session.commit()
        return experiment.id


def record(epoch: int, loss: float, layers: tuple[int, ...] = (2, 4)) -> dict:
    """An epoch record as the Trainer's on_epoch_end delivers it."""
    losses = {"loss": loss, "ce_loss": loss - 0.01, "aux_loss": 0.01}
    return {
        "epoch": epoch,
        "train": losses,
        "val": losses,
        "tokens_per_sec": 1000.0,
        "steps": 8,
        "forward_time": 0.1,
        "backward_time": 0.2,
        "optimizer_time": 0.05,
        "gating_temperature": 1.0,
        "duration": 0.5,
        "expert_stats": [
            {
                "layer": layer,
                "entropy": 2.0,
                "min_usage": 10.0,
                "max_usage": 15.0,
                "usage": [12.5] * 8,
                "dropped": 0.1,
            }
            for layer in layers
        ],  # fmt: skip
        "best_val_loss": loss,
        "patience_counter": 0,
        "stopped_early": False,
    }


def claim(
    database: str,
    experiment_id: int,
    owner: str,
    *,
    stale_after: float = 60,
    max_restarts: int = 5,
    dead: tuple[str, ...] = (),
    worker_name: str | None = None,
) -> runs.Claim:
    with session_scope(database) as session:
        return runs.claim_run(
            session=session,
            experiment_id=experiment_id,
            owner=owner,
            worker_name=worker_name,
            device="cpu",
            stale_before=utcnow() - timedelta(seconds=stale_after),
            max_restarts=max_restarts,
            owner_is_dead=lambda o: o in dead,
        )


def write(database: str, experiment_id: int, owner: str, rec: dict) -> None:
    with session_scope(database) as session:
        runs.record_epoch(session=session, experiment_id=experiment_id, owner=owner, record=rec)


def counts(database: str, experiment_id: int) -> tuple[int, int]:
    with session_scope(database) as session:
        epochs = session.scalar(
            select(func.count()).where(EpochMetrics.experiment_id == experiment_id)
        )
        stats = session.scalar(
            select(func.count()).where(ExpertStats.experiment_id == experiment_id)
        )
        return epochs, stats


def run_row(database: str, experiment_id: int):
    with session_scope(database) as session:
        return runs.get_experiment(session=session, experiment_id=experiment_id)
