"""Small factories of test data (request bodies, runs, epoch records, claims, results) and
counts of what became of it (rows, queued tasks)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from moe_core.config import base_config, get_experiment_configs
from moe_core.records import EpochRecord, EvalLayerRouting, LayerRouting, Losses, StepPoint
from store import catalogue, leases, system_points
from store.db import session_scope
from store.models import EpochMetrics, ExpertStats, Status, utcnow
from store.system_points import SystemReading


def fast_base(**overrides: Any) -> dict[str, Any]:
    """A request's `base` (over the micro preset) for a run of seconds on the generated
    corpus; `overrides` are BaseConfig fields. (The engine tests' `micro_base` fixture is
    the micro BaseConfig itself.)"""
    return {"max_train_tokens": 4096, "max_val_tokens": 1024, **overrides}


def request_body(name: str = "run", **fields: Any) -> dict[str, Any]:
    """A POST /experiments (or /studies) body on the micro base preset and `fast_base()`;
    `fields` add keys or replace these (`base=fast_base(num_epochs=4)`)."""
    return {"name": name, "base_preset": "micro", "base": fast_base(), **fields}


def new_experiment(
    database: str,
    name: str = "t",
    *,
    dense: bool = False,
    baseline_id: int | None = None,
    tags: tuple[str, ...] = (),
    **base_overrides: Any,
) -> int:
    """A queued run of the micro base's `baseline` preset (`base_overrides`: BaseConfig
    fields); `dense` for a dense baseline, `baseline_id` for the dense run it is judged by."""
    base = base_config("micro", **base_overrides)
    with session_scope(database) as session:
        experiment = catalogue.create_experiment(
            session=session, name=name, config=get_experiment_configs(base)["baseline"],
            base=base, preset=None if dense else "baseline", dense=dense,
            baseline_id=baseline_id, tags=tags,
        )  # fmt: skip
        session.commit()
        return experiment.id


def new_study(
    database: str, *, seeds: int, presets: tuple[str, ...] = ("baseline",),
    config: dict[str, Any] | None = None, dense: bool = True, **base_overrides: Any,
) -> dict[tuple[str, int], int]:  # fmt: skip
    """A queued study on the micro base, as POST /studies stores one: for each seed a dense
    run ("dense"; not with `dense=False`) and one run per preset, each judged against its
    seed's dense run; `config`: ExperimentConfig fields over every run's. Returns
    {(preset or "dense", seed): id}."""
    from moe_core.config import dense_config

    first = base_config("micro", **base_overrides)
    with session_scope(database) as session:
        study = catalogue.create_study(session=session, name="study", base=first,
                                       base_preset="micro", presets=list(presets), seeds=seeds)  # fmt: skip
        ids: dict[tuple[str, int], int] = {}
        for seed in range(first.seed, first.seed + seeds):
            base = first.model_copy(update={"seed": seed})
            configs = {"dense": dense_config(base)} if dense else {}
            configs.update({name: get_experiment_configs(base)[name] for name in presets})
            for name, run_config in configs.items():
                run = catalogue.create_experiment(
                    session=session, name=f"{name}-{seed}", base=base, study=study,
                    config=run_config.model_copy(update=config or {}), dense=name == "dense",
                    preset=None if name == "dense" else name, base_preset="micro",
                    baseline_id=ids.get(("dense", seed)),
                )  # fmt: skip
                ids[(name, seed)] = run.id
        session.commit()
    return ids


def step_point(step: int, *, epoch: int = 1, loss: float = 5.0) -> StepPoint:
    """A step point as the Trainer's on_steps delivers it (moe_core.records.StepPoint):
    512 tokens a step, 0.01 s a step."""
    return {"step": step, "epoch": epoch, "tokens": 512 * step, "wall_time": 0.01 * step,
            "loss": loss, "ce_loss": loss - 0.01, "aux_loss": 0.01, "learning_rate": 1e-3,
            "grad_norm": 0.5 + step / 1000, "tokens_per_sec": 51200.0}  # fmt: skip


def record(epoch: int, loss: float, layers: tuple[int, ...] = (2, 4)) -> EpochRecord:
    """An epoch record as the Trainer's on_epoch_end delivers it (moe_core.records)."""
    losses: Losses = {"loss": loss, "ce_loss": loss - 0.01, "aux_loss": 0.01}
    max_entropy = math.log(8)
    trained: list[LayerRouting] = [
        {"layer": layer, "entropy": 2.0, "max_entropy": max_entropy, "min_usage": 10.0,
         "max_usage": 15.0, "usage": [12.5] * 8, "dropped": 0.1, "imbalance": 0.2,
         "max_step_load": 30.0, "max_imbalance": 1.4, "pad_ratio": 0.15, "z_loss": 3.1}
        for layer in layers
    ]  # fmt: skip
    # The trained model over the validation set: collapsed, unlike the training sums.
    evaluated: list[EvalLayerRouting] = [
        {"layer": layer, "entropy": 1.5, "max_entropy": max_entropy, "min_usage": 0.0,
         "max_usage": 40.0, "usage": [40.0, 0.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0],
         "dropped": 0.2, "imbalance": 2.2}
        for layer in layers
    ]  # fmt: skip
    return {
        "epoch": epoch,
        "train": losses,
        "train_eval": {"ce_loss": loss - 0.05},
        "val": losses,
        "tokens_per_sec": 1000.0,
        "steps": 8,
        "forward_time": 0.1,
        "backward_time": 0.2,
        "optimizer_time": 0.05,
        "duration": 0.5,
        "gating_temperature": 1.0,
        "expert_stats": trained,
        "eval_expert_stats": evaluated,
        "model_name": "t",
        "best_val_loss": loss,
        "best_val_ce_loss": loss - 0.01,
        "best_epoch": epoch,
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
) -> leases.Claim:
    with session_scope(database) as session:
        return leases.claim_run(
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
        leases.record_epoch(session=session, experiment_id=experiment_id, owner=owner, record=rec)


def write_steps(
    database: str, experiment_id: int, owner: str, points: list, every: int = 1
) -> None:
    with session_scope(database) as session:
        leases.record_steps(session=session, experiment_id=experiment_id, owner=owner,
                            every=every, points=points)  # fmt: skip


def system_reading(second: int, *, cpu: float = 100.0, rss: float = 512.0) -> SystemReading:
    """A CPU run's system reading (store.system_points) `second` s after a fixed start."""
    return {"t": SYSTEM_START + timedelta(seconds=second), "elapsed_s": float(second),
            "step": 10 * second, "epoch": second / 100, "cpu_percent": cpu, "rss_mb": rss,
            "gpu_util": None, "gpu_mem_mb": None, "gpu_power_w": None}  # fmt: skip


SYSTEM_START = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def write_system(
    database: str, experiment_id: int, owner: str, points: list, max_points: int = 2000
) -> bool:
    with session_scope(database) as session:
        return system_points.record_system_points(session=session, experiment_id=experiment_id,
                                                  owner=owner, points=points,
                                                  max_points=max_points)  # fmt: skip


def counts(database: str, experiment_id: int) -> tuple[int, int]:
    with session_scope(database) as session:
        epochs = session.scalar(
            select(func.count()).where(EpochMetrics.experiment_id == experiment_id)
        )
        stats = session.scalar(
            select(func.count()).where(ExpertStats.experiment_id == experiment_id)
        )
        return epochs, stats


def queued_messages(redis_client, prefix: str) -> int:
    """Tasks waiting in the `gpu` queue of the deployment whose broker keys start `prefix`."""
    return redis_client.llen(f"{prefix}gpu")


def epoch_rows(database_url: str, experiment_id: int) -> list[int]:
    """Epoch numbers of the run's rows, one per row (a duplicate would show twice)."""
    with session_scope(database_url) as session:
        return sorted(session.scalars(
            select(EpochMetrics.epoch).where(EpochMetrics.experiment_id == experiment_id)))  # fmt: skip


def assert_one_row_per_epoch(database_url: str, run: dict) -> None:
    """Each of the run's epochs stored once: its metrics row, and training and evaluation
    statistics for each MoE layer of the micro base (2 and 4; a dense run has none)."""
    epochs = list(range(1, run["current_epoch"] + 1))
    assert epoch_rows(database_url, run["id"]) == epochs
    with session_scope(database_url) as session:
        layers = session.execute(
            select(ExpertStats.epoch, ExpertStats.kind, ExpertStats.layer).where(
                ExpertStats.experiment_id == run["id"])).all()  # fmt: skip
    assert sorted(layers) == [
        (epoch, kind, layer) for epoch in epochs for kind in ("eval", "train")
        for layer in (() if run.get("dense") else (2, 4))
    ]  # fmt: skip


def run_row(database: str, experiment_id: int):
    with session_scope(database) as session:
        return catalogue.get_experiment(session=session, experiment_id=experiment_id)


def result(
    val_ce: float,
    *,
    train_eval_ce: float | None = None,
    eval_usage: tuple[float, ...] = (12.5,) * 8,
    params: int = 1000,
    dense: bool = False,
) -> dict:
    """What run_single_experiment returns (docs/verdicts-contract.md), for two epochs whose
    second is the best: enough for moe_core.criteria to judge."""
    train_eval_ce = val_ce - 0.2 if train_eval_ce is None else train_eval_ce
    layers = [] if dense else [
        {"layer": layer, "entropy": 2.0, "max_entropy": 2.0794, "usage": list(eval_usage),
         "min_usage": min(eval_usage), "max_usage": max(eval_usage), "dropped": 0.05}
        for layer in (2, 4)
    ]  # fmt: skip
    metrics = {
        "train_losses": [val_ce + 0.5, val_ce], "train_ce_losses": [val_ce + 0.5, val_ce],
        "val_losses": [val_ce + 0.3, val_ce], "val_ce_losses": [val_ce + 0.3, val_ce],
        "val_epochs": [1, 2], "train_eval_ce_losses": [train_eval_ce + 0.3, train_eval_ce],
        "tokens_per_sec": [1000.0, 1000.0],
        "timing_breakdown": {"forward": [0.1, 0.1], "backward": [0.2, 0.2],
                             "optimizer": [0.05, 0.05]},
        "expert_stats_history": [] if dense else [
            {"epoch": 2, "layers": [{**layer, "max_step_load": 30.0} for layer in layers]}
        ],
        "eval_expert_stats_history": [] if dense else [{"epoch": 2, "layers": layers}],
        "best_val_loss": val_ce, "best_val_ce_loss": val_ce, "best_epoch": 2,
        "stopped_early": False,
    }  # fmt: skip
    return {
        "config": {"name": "dense" if dense else "moe"},
        "metrics": metrics,
        "params": params,
        "active_params": params if dense else params // 2,
        "test": {"loss": val_ce + 0.1, "ce_loss": val_ce + 0.1, "aux_loss": 0.0, "epoch": 2},
        "evaluation": {"capacity_factor": None, "train_subset_blocks": 16},
        "seed": 1337,
        "device": "cpu",
        "precision": "fp32",
        "compile": "off",
    }


def succeed(database: str, experiment_id: int, run_result: dict) -> None:
    """Claim a queued run and finish it with `run_result`, as a worker would."""
    owner = f"fake-worker-{experiment_id}"
    assert claim(database, experiment_id, owner).outcome is leases.ClaimOutcome.claimed
    with session_scope(database) as session:
        assert leases.finish_experiment(session=session, experiment_id=experiment_id, owner=owner,
                                      status=Status.succeeded, result=run_result)  # fmt: skip
