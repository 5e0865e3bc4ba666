"""A sweep whose trials' seeds train together (moe_core.together): the pruner is told the
mean of the seeds at each epoch, not the first seed's value, and the report says so."""

import pytest

from moe_core.search import SweepConfig, prune_rule
from moe_core.sweep import _MeanPruneWatch, run_sweep


class Pruner:
    """A proposer that records what it is told and prunes above a threshold."""

    def __init__(self, above: float = float("inf")) -> None:
        self.told: list[tuple[int, float, int]] = []
        self.above = above

    def report(self, number: int, value: float, epoch: int) -> bool:
        self.told.append((number, value, epoch))
        return value > self.above


def record(epoch: int, val_ce: float | None) -> dict:
    return {"epoch": epoch, "val": None if val_ce is None else {"ce_loss": val_ce}}


def test_the_pruner_is_told_the_mean_once_every_seed_has_the_epoch():
    pruner = Pruner()
    watch = _MeanPruneWatch(pruner, 4, replicas=3, report=True)
    hooks = [watch.replica(i) for i in range(3)]
    hooks[0](record(1, 6.0))
    hooks[1](record(1, 6.3))
    assert pruner.told == []  # one seed is still missing: its noise must not decide
    hooks[2](record(1, 6.6))
    assert pruner.told == [(4, pytest.approx(6.3), 1)]
    for i, value in enumerate((5.0, 5.2, 5.4)):
        hooks[i](record(2, value))
    assert pruner.told[-1] == (4, pytest.approx(5.2), 2) and not watch.should_stop()
    assert [len(e) for e in watch.epochs] == [2, 2, 2]


def test_a_seed_that_stopped_early_does_not_hold_the_others_judgement_back():
    pruner = Pruner()
    watch = _MeanPruneWatch(pruner, 0, replicas=2, report=True)
    a, b = watch.replica(0), watch.replica(1)
    a(record(1, 6.0)), b(record(1, 7.0))
    b(record(2, 6.5))  # seed 0 early-stopped after epoch 1: epoch 2 has one seed
    assert [t[2] for t in pruner.told] == [1]
    b(record(3, 6.4))  # the next epoch shows that epoch 2 is complete; 3 is, as 2 had one
    assert pruner.told[1:] == [(0, pytest.approx(6.5), 2), (0, pytest.approx(6.4), 3)]
    assert watch.mean_curve == {1: pytest.approx(6.5), 2: pytest.approx(6.5), 3: pytest.approx(6.4)}


def test_an_epoch_left_unjudged_at_the_end_gets_its_mean_for_the_report():
    pruner = Pruner()
    watch = _MeanPruneWatch(pruner, 0, replicas=2, report=True)
    a, b = watch.replica(0), watch.replica(1)
    a(record(1, 6.0)), b(record(1, 7.0))
    b(record(2, 6.5))  # seed 0 stopped; training ends with seed 1's epoch 2
    watch.close()
    assert watch.mean_curve[2] == pytest.approx(6.5) and [t[2] for t in pruner.told] == [1]


def test_a_prune_on_the_mean_stops_every_seed():
    pruner = Pruner(above=6.2)
    watch = _MeanPruneWatch(pruner, 1, replicas=2, report=True)
    a, b = watch.replica(0), watch.replica(1)
    a(record(1, 5.9))
    assert not watch.should_stop()  # the first seed alone is under the bar
    b(record(1, 6.9))
    assert watch.should_stop() and watch.pruned_at == 1


def test_without_pruning_the_means_are_kept_but_nothing_is_told():
    pruner = Pruner(above=0)
    watch = _MeanPruneWatch(pruner, 1, replicas=2, report=False)
    watch.replica(0)(record(1, 5.0)), watch.replica(1)(record(1, 6.0))
    assert pruner.told == [] and watch.mean_curve == {1: 5.5} and not watch.should_stop()


def test_the_report_names_the_rule_it_pruned_by():
    sweep = SweepConfig(base_preset="micro", seeds=3, prune_margin=0.01, method="grid",
                        space={"learning_rate": {"choices": [0.003, 0.001]}})  # fmt: skip
    assert "mean val CE of the trial's 3 seeds" in prune_rule(sweep, True)
    assert "first seed" in prune_rule(sweep, False) and "0.01 nats" in prune_rule(sweep, False)
    assert prune_rule(sweep.model_copy(update={"prune": False}), True) is None


FAST = {"max_train_tokens": 4096, "max_val_tokens": 1024, "num_epochs": 3}
HEALTHY = {"num_experts": 2, "top_k": 2, "capacity_factor": 2.0}


def test_a_sweep_with_seeds_together_prunes_on_the_mean(tmp_path, corpus_dir, cache_dir):
    sweep = SweepConfig(base_preset="micro", base=FAST, overrides=HEALTHY, method="grid", seeds=2,
                        space={"learning_rate": {"choices": [0.003, 0.002, 1e-7]}})  # fmt: skip
    report = run_sweep(sweep, tmp_path, data_dir=str(corpus_dir), cache_dir=str(cache_dir),
                       device="cpu", verbose=False, seeds_together=True)  # fmt: skip
    assert report["seeds_together"] and "mean val CE" in report["prune_rule"]
    done, also, bad = report["trials"]
    assert done["state"] == also["state"] == "complete"
    assert [r["seed"] for r in done["runs"]] == [1337, 1338]
    assert done["objective"]["mean"] is not None and done["verdict"]["seeds"] == 2
    # each epoch's mean is the mean of the two seeds' val CE
    for epoch, mean in done["mean_curve"].items():
        vals = [r["metrics"]["val_ce_losses"][int(epoch) - 1] for r in done["runs"]]
        assert mean == pytest.approx(sum(vals) / 2)
    assert bad["state"] == "pruned" and bad["pruned_at_epoch"] == 2 and bad["runs"] == []
    assert [e["epoch"] for e in bad["epochs"]] == [1, 2]
