"""The records are declared once (moe_core.records): what the Trainer hands out, and what
the test factories build, have exactly their keys, so a key added in one place only fails
here (the store's side: tests/store/test_results.py; the API serves the types themselves)."""

from moe_core.hooks import TrainerHooks
from moe_core.records import (
    METRICS_KEYS,
    EpochRecord,
    EvalLayerRouting,
    LayerRouting,
    Losses,
    ProgressReport,
    TrainEvalLoss,
    keys,
)
from tests.factories import record
from tests.moe_core.test_trainer import make_trainer


def assert_is_epoch_record(r: dict) -> None:
    assert set(r) == set(keys(EpochRecord))
    assert set(r["train"]) == set(r["val"]) == set(keys(Losses))
    assert set(r["train_eval"]) == set(keys(TrainEvalLoss))
    assert r["expert_stats"] and r["eval_expert_stats"]
    for layer in r["expert_stats"]:
        assert set(layer) == set(keys(LayerRouting))
    for layer in r["eval_expert_stats"]:
        assert set(layer) == set(keys(EvalLayerRouting))


def test_the_trainer_hands_out_exactly_the_declared_records():
    from torch.utils.data import DataLoader

    from tests.moe_core.test_trainer import random_blocks

    epochs, reports = [], []
    trainer = make_trainer(hooks=TrainerHooks(on_epoch_end=epochs.append, on_progress=reports.append),
                           train_eval_loader=DataLoader(random_blocks(8), batch_size=8))  # fmt: skip
    metrics = trainer.train(1)
    assert_is_epoch_record(epochs[0])
    assert {frozenset(r) for r in reports} == {frozenset(keys(ProgressReport))}
    assert {r["phase"] for r in reports} == {"training", "evaluating"}
    assert set(metrics) == set(METRICS_KEYS)


def test_the_factories_build_exactly_the_declared_records():
    assert_is_epoch_record(record(1, 5.0))
