"""The service section's epoch-streaming figure: the seconds one epoch's rows take to store
(`leases.record_epoch`, as the worker's epoch callback calls it, one session and
transaction per epoch), as a fraction of a tiny-preset training epoch through the Trainer.
The epochs written here are also the stored metrics that api_latency reads back."""

from __future__ import annotations

import time
from typing import Any

from .context import Context
from .deployment import Deployment
from .harness import summarize


def _epoch_record(epoch: int, layers: int) -> dict[str, Any]:
    usage = [100 / 8] * 8
    return {
        "epoch": epoch, "model_name": "bench",
        "train": {"loss": 5.0, "ce_loss": 4.99, "aux_loss": 0.01},
        "val": {"loss": 5.1, "ce_loss": 5.09, "aux_loss": 0.01},
        "tokens_per_sec": 10_000.0, "steps": 76, "forward_time": 1.0, "backward_time": 2.0,
        "optimizer_time": 0.5, "gating_temperature": 1.0,
        "expert_stats": [
            {"layer": 2 * (i + 1), "entropy": 2.07, "max_entropy": 2.079, "min_usage": 12.5,
             "max_usage": 12.5, "usage": usage, "dropped": 0.01}
            for i in range(layers)
        ],
        "best_val_loss": 5.1, "patience_counter": 0, "stopped_early": False,
    }  # fmt: skip


def seed_metrics(dep: Deployment, epochs: int, layers: int) -> tuple[int, list[float]]:
    """A running experiment with `epochs` epochs of rows, written the way the worker
    writes them (one session and transaction per epoch); returns its id and the seconds
    each write took."""
    from sqlalchemy import update

    from moe_core.config import base_config, get_experiment_configs
    from store import catalogue, leases
    from store.db import session_scope
    from store.models import Experiment, Status

    base = base_config("tiny")
    with session_scope(dep.url) as session:
        exp = catalogue.create_experiment(session=session, name="bench-metrics",
                                     config=get_experiment_configs(base)["baseline"], base=base,
                                     preset="baseline", base_preset="tiny")  # fmt: skip
        session.execute(update(Experiment).where(Experiment.id == exp.id)
                        .values(status=Status.running, worker="bench"))  # fmt: skip
        session.commit()
        experiment_id = exp.id
    seconds = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        with session_scope(dep.url) as session:
            leases.record_epoch(session=session, experiment_id=experiment_id, owner="bench",
                              record=_epoch_record(epoch, layers))  # type: ignore[arg-type]  # a partial record: the store reads what it has  # fmt: skip
        seconds.append(time.perf_counter() - t0)
    return experiment_id, seconds


def tiny_epoch_seconds(ctx: Context) -> float:
    """A tiny-preset training epoch (its real number of steps) through the Trainer."""
    import torch

    from moe_core.config import base_config, get_experiment_configs
    from moe_core.runner import build_model, build_optimizer
    from moe_core.trainer import Trainer

    base = base_config("micro" if ctx.smoke else "tiny")
    cfg = get_experiment_configs(base)["baseline"]
    assert base.max_train_tokens is not None, "the tiny and micro presets cap the tokens"
    steps = base.max_train_tokens // (base.seq_len + 1) // cfg.batch_size
    torch.manual_seed(0)
    model = build_model(cfg, base)
    data = torch.randint(0, base.vocab_size, (steps, cfg.batch_size, base.seq_len + 1))
    batches = [(b[:, :-1], b[:, 1:]) for b in data]
    trainer = Trainer(model, batches, batches[:1], build_optimizer(model, cfg, base), "cpu",
                      verbose=False)  # fmt: skip
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        trainer.train_epoch()
        times.append(time.perf_counter() - t0)
    return min(times)


def row(ctx: Context, writes: list[float], layers: int) -> dict[str, Any]:
    """The figure, from seed_metrics' `writes` (seconds each epoch's rows took)."""
    write = summarize(writes)
    try:
        epoch = tiny_epoch_seconds(ctx)
    except Exception as exc:  # the engine mid-edit must not cost the service's figures
        # (named so that report.TARGETS' "epoch streaming" finds no row: not measured)
        return {"name": "tiny epoch, for epoch streaming", "seconds": write,
                "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
    return {
        "name": "epoch streaming (record_epoch)",
        "params": {"layers": layers, "tiny_epoch_s": epoch},
        "seconds": write,
        "fraction_of_epoch": write["median"] / epoch,
    }
