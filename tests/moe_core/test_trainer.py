import inspect
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from moe_core.checkpoint import Checkpointing
from moe_core.config import ExperimentConfig, base_config
from moe_core.errors import TrainingCancelled, TrainingDiverged
from moe_core.hooks import TrainerHooks
from moe_core.records import HISTORY_FIELDS, HistoryField
from moe_core.runner import build_model, build_optimizer, run_single_experiment
from moe_core.trainer import Trainer

TRAIN_EPOCH_KEYS = {
    "loss",
    "ce_loss",
    "aux_loss",
    "tokens_per_sec",
    "forward_time",
    "backward_time",
    "optimizer_time",
}
EVAL_KEYS = {"loss", "ce_loss", "aux_loss"}
METRIC_KEYS = {
    "train_losses", "val_losses", "train_ce_losses", "val_ce_losses", "train_aux_losses",
    "val_aux_losses", "tokens_per_sec", "steps", "current_step", "timing_breakdown",
    "expert_stats_history", "best_val_loss", "patience_counter", "stopped_early",
}  # fmt: skip
# Ours, beside the spec's: per evaluation, its epoch, the eval-mode training CE and the
# routing over the validation set; the best epoch and its CE.
EVAL_METRIC_KEYS = {
    "val_epochs", "train_eval_ce_losses", "eval_expert_stats_history", "best_epoch",
    "best_val_ce_loss",
}  # fmt: skip


def random_blocks(n: int, seq_len: int = 16, vocab: int = 512, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab, (n, seq_len + 1), generator=g)
    return TensorDataset(data[:, :-1], data[:, 1:])


def make_trainer(lr=1e-3, patience=0, schedule=None, moe=True, dropout=0.0, **kw) -> Trainer:
    base = base_config("micro", seq_len=16, learning_rate=lr)
    config = ExperimentConfig(name="t", expert_dim=64, batch_size=8, dropout=dropout)
    model = build_model(config, base, dense=not moe)
    train = DataLoader(random_blocks(32), batch_size=8, shuffle=True)
    val = DataLoader(random_blocks(8, seed=1), batch_size=8)
    return Trainer(model, train, val, build_optimizer(model, config, base), "cpu", "t",
                   early_stopping_patience=patience, gating_temp_schedule=schedule, verbose=False, **kw)  # fmt: skip


def test_trainer_has_every_spec_attribute():
    trainer = make_trainer()
    for name in METRIC_KEYS:  # every key is also an attribute
        assert hasattr(trainer, name), name
    assert set(trainer.timing_breakdown) == {"forward", "backward", "optimizer"}


SPEC_PARAMETERS = ["model", "train_loader", "val_loader", "optimizer", "device", "model_name",
                   "early_stopping_patience", "gating_temp_schedule"]  # fmt: skip


def test_the_spec_constructor_works_as_the_spec_shows_it_and_the_rest_is_two_objects():
    parameters = inspect.signature(Trainer).parameters
    assert list(parameters)[: len(SPEC_PARAMETERS)] == SPEC_PARAMETERS
    assert [parameters[n].default for n in SPEC_PARAMETERS[5:]] == ["model", 0, None]
    ours = list(parameters.values())[len(SPEC_PARAMETERS) :]
    assert all(p.kind is p.KEYWORD_ONLY for p in ours)
    # The hooks and the checkpointing travel whole, not as keywords of their own
    assert {"hooks", "checkpointing"} <= set(parameters)
    assert not {"on_epoch_end", "should_stop", "checkpoint_path"} & set(parameters)
    base = base_config("micro", seq_len=16)
    config = ExperimentConfig(name="t", expert_dim=64, batch_size=8)
    model = build_model(config, base)
    schedule = {"start": 1.0, "end": 0.5, "epochs": 5}
    trainer = Trainer(model, DataLoader(random_blocks(16), batch_size=8),
                      DataLoader(random_blocks(8), batch_size=8),
                      build_optimizer(model, config, base), "cpu", "named", 2, schedule)  # fmt: skip
    assert (trainer.model_name, trainer.early_stopping_patience) == ("named", 2)
    assert trainer.gating_temp_schedule.model_dump() == schedule
    assert trainer.hooks == TrainerHooks() and trainer.checkpointing == Checkpointing()
    assert Checkpointing("run/c.pt").path == Path("run/c.pt")


def test_every_history_field_is_an_attribute_written_out_and_read_and_written_through():
    declared = {name for name, value in vars(Trainer).items() if isinstance(value, HistoryField)}
    assert declared == set(HISTORY_FIELDS)  # a field added to the history only fails here
    trainer = make_trainer()
    trainer.train(1)
    for name in HISTORY_FIELDS:
        assert getattr(trainer, name) == getattr(trainer.history, name), name
    assert (trainer.epoch, trainer.current_step) == (1, 4)
    trainer.current_step = 41
    trainer.patience_counter = 2
    assert (trainer.history.current_step, trainer.history.patience_counter) == (41, 2)
    trainer.train_losses.append(9.0)
    assert trainer.history.train_losses[-1] == 9.0


def test_train_epoch_evaluate_and_get_metrics_return_exactly_the_spec_keys():
    trainer = make_trainer()
    stats = trainer.train_epoch()
    assert set(stats) == TRAIN_EPOCH_KEYS
    assert stats["loss"] == pytest.approx(stats["ce_loss"] + stats["aux_loss"], rel=1e-5)
    assert stats["tokens_per_sec"] > 0 and stats["forward_time"] > 0
    assert set(trainer.evaluate()) == EVAL_KEYS
    trainer.train(2)
    metrics = trainer.get_metrics()
    assert set(metrics) == METRIC_KEYS | EVAL_METRIC_KEYS
    assert metrics["steps"] == [4, 4, 4] and metrics["current_step"] == 12
    assert len(metrics["timing_breakdown"]["forward"]) == 3


def test_expert_stats_each_epoch():
    trainer = make_trainer()
    trainer.train(2)
    history = trainer.expert_stats_history
    assert [h["epoch"] for h in history] == [1, 2]
    layers = history[-1]["layers"]
    assert [s["layer"] for s in layers] == [2, 4]
    for s in layers:
        assert sum(s["usage"]) == pytest.approx(100.0)
        assert s["min_usage"] == pytest.approx(min(s["usage"])) and s["max_usage"] == pytest.approx(
            max(s["usage"])
        )
        assert 0 <= s["entropy"] <= s["max_entropy"] + 1e-9
        assert 0 <= s["dropped"] < 1


def test_dense_model_has_no_expert_stats():
    trainer = make_trainer(moe=False)
    trainer.train(1)
    assert trainer.expert_stats_history == []
    assert trainer.train_aux_losses == [0.0]


def test_gating_temperature_follows_the_schedule_per_epoch():
    seen = []
    trainer = make_trainer(
        schedule={"start": 1.0, "end": 0.5, "epochs": 5},
        hooks=TrainerHooks(on_epoch_end=seen.append),
    )
    trainer.train(7)
    temps = [round(r["gating_temperature"], 6) for r in seen]
    assert temps == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5]
    assert all(layer.router.temperature == pytest.approx(0.5) for layer in trainer.moe_layers)
    assert [round(h["gating_temperature"], 6) for h in trainer.expert_stats_history] == temps


def test_early_stopping_after_patience_epochs_without_improvement_keeps_best_model():
    trainer = make_trainer(lr=1e-12, patience=2)  # the loss barely moves, so it never improves
    first = {}

    def remember(record):
        if record["epoch"] == 1:
            first.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    trainer.hooks.on_epoch_end = remember
    trainer.val_loader = DataLoader(random_blocks(8, seed=1), batch_size=8)
    # Make later evaluations worse than the first, deterministically.
    original = trainer.evaluate
    calls = []

    def worsening():
        out = original()
        calls.append(1)
        bump = 0.1 * (len(calls) - 1)
        trainer.val_losses[-1] += bump
        out["loss"] += bump
        return out

    trainer.evaluate = worsening
    trainer.train(10)
    assert trainer.stopped_early
    assert len(trainer.train_losses) == 3  # the best epoch + `patience` epochs without improvement
    assert trainer.patience_counter == 2
    assert trainer.best_val_loss == trainer.val_losses[0]
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(v, first[k])


def test_no_early_stopping_when_patience_is_zero():
    trainer = make_trainer(lr=1e-12)
    trainer.train(4)
    assert not trainer.stopped_early and len(trainer.train_losses) == 4


def test_eval_every_skips_evaluations_but_always_evaluates_the_last_epoch():
    seen = []
    trainer = make_trainer(hooks=TrainerHooks(on_epoch_end=seen.append))
    trainer.train(5, eval_every=2)
    assert [r["val"] is not None for r in seen] == [False, True, False, True, True]
    assert len(trainer.val_losses) == 3


def test_epoch_record_is_complete():
    seen = []
    make_trainer(hooks=TrainerHooks(on_epoch_end=seen.append)).train(1)
    (r,) = seen
    assert {"epoch", "train", "val", "tokens_per_sec", "steps", "forward_time", "backward_time",
            "optimizer_time", "gating_temperature", "expert_stats"} <= set(r)  # fmt: skip
    assert set(r["train"]) == set(r["val"]) == EVAL_KEYS
    assert {"layer", "entropy", "min_usage", "max_usage", "usage"} <= set(r["expert_stats"][0])


def test_stop_check_cancels_within_a_step_and_keeps_finished_epochs():
    steps = {"n": 0}

    def count_steps(*_):
        steps["n"] += 1

    seen = []
    trainer = make_trainer(hooks=TrainerHooks(on_epoch_end=seen.append))
    trainer.model.register_forward_hook(count_steps)  # forward passes, training and eval
    trainer.hooks.should_stop = lambda: steps["n"] >= 7  # epoch 1: 4 steps + 1 eval batch
    with pytest.raises(TrainingCancelled) as stopped:
        trainer.train(5)
    assert [r["epoch"] for r in seen] == [1]
    assert trainer.current_step == 6  # stopped before its 7th forward pass: step 2 of epoch 2
    assert (stopped.value.epoch, stopped.value.step) == (2, 2)
    assert trainer.train_losses and len(trainer.train_losses) == 1


def test_an_epoch_record_carries_its_duration():
    seen = []
    make_trainer(hooks=TrainerHooks(on_epoch_end=seen.append)).train(2)
    assert all(r["duration"] > 0 for r in seen)


def test_label_smoothing_changes_the_objective_not_the_reported_ce():
    torch.manual_seed(0)
    a = make_trainer(lr=1e-12)
    torch.manual_seed(0)
    b = make_trainer(lr=1e-12, label_smoothing=0.1)
    b.model.load_state_dict(a.model.state_dict())
    sa, sb = a.evaluate(), b.evaluate()
    assert sa["ce_loss"] == pytest.approx(sb["ce_loss"])
    x, y = next(iter(a.train_loader))
    obj_a, ce_a, _, _ = a.loss_step.eager(x, y, 0.0)
    obj_b, ce_b, _, _ = b.loss_step.eager(x, y, 0.1)
    assert ce_a.item() == pytest.approx(ce_b.item())
    expected = torch.nn.functional.cross_entropy(
        a.model(x)[0].view(-1, 512), y.reshape(-1), label_smoothing=0.1
    )
    assert (obj_b - (obj_a - ce_a)).item() == pytest.approx(expected.item(), rel=1e-5)


def test_resume_from_checkpoint_reproduces_an_uninterrupted_run(micro_data, tmp_path):
    config = ExperimentConfig(name="resume", expert_dim=64, batch_size=16, dropout=0.1,
                              gating_temp_schedule={"start": 1.0, "end": 0.5, "epochs": 3})  # fmt: skip
    full_base = base_config("micro", num_epochs=4)
    full = run_single_experiment(
        config, micro_data.train, micro_data.val, full_base, "cpu", verbose=False
    )

    ckpt = tmp_path / "ckpt.pt"
    seen = []
    first = run_single_experiment(config, micro_data.train, micro_data.val, base_config("micro", num_epochs=2),
                                  "cpu", checkpointing=Checkpointing(ckpt), verbose=False)  # fmt: skip
    assert len(first["metrics"]["train_losses"]) == 2 and ckpt.is_file()
    torch.manual_seed(12345)  # a resumed process starts with other RNG state
    resumed = run_single_experiment(config, micro_data.train, micro_data.val, full_base, "cpu",
                                    checkpointing=Checkpointing(ckpt),
                                    hooks=TrainerHooks(on_epoch_end=seen.append), verbose=False)  # fmt: skip
    assert [r["epoch"] for r in seen] == [3, 4]  # continues at epoch k + 1
    for key in ("train_losses", "val_losses", "train_ce_losses", "val_aux_losses", "steps"):
        assert resumed["metrics"][key] == full["metrics"][key], key
    assert resumed["metrics"]["current_step"] == full["metrics"]["current_step"]
    usage = lambda m: [layer["usage"] for h in m["expert_stats_history"] for layer in h["layers"]]  # noqa: E731
    assert usage(resumed["metrics"]) == usage(full["metrics"])


def test_a_diverged_epoch_raises_and_records_nothing():
    trainer = make_trainer()
    with torch.no_grad():
        trainer.model.lm_head.weight[0, 0] = float("nan")  # tied: every logit of token 0 is NaN
    with pytest.raises(TrainingDiverged, match="training loss is nan in epoch 1"):
        trainer.train(2)
    assert trainer.train_losses == [] and trainer.epoch == 0


# ---------------------------------------------------------------------------- exact resume


def resumable_run(micro_data, base, checkpoint=None, stop=None, on_epoch_end=None, tag=None):
    config = ExperimentConfig(name="exact", expert_dim=64, batch_size=8, dropout=0.2,
                              gating_temp_schedule={"start": 1.5, "end": 0.5, "epochs": 2})  # fmt: skip
    return run_single_experiment(config, micro_data.train, micro_data.val, base, "cpu",
                                 hooks=TrainerHooks(on_epoch_end=on_epoch_end, should_stop=stop),
                                 checkpointing=Checkpointing(checkpoint, tag=tag),
                                 verbose=False)  # fmt: skip


class StopAt:
    """should_stop that fires at the n-th check (training steps and evaluation batches)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls == self.n


def exact_metrics(metrics):
    keys = ("train_losses", "train_ce_losses", "train_aux_losses", "val_losses",
            "val_ce_losses", "val_aux_losses", "steps", "current_step", "val_epochs",
            "train_eval_ce_losses", "best_epoch", "best_val_ce_loss")  # fmt: skip
    usage = [(layer["usage"], layer["dropped"], layer.get("max_step_load"))
             for h in metrics["expert_stats_history"] + metrics["eval_expert_stats_history"]
             for layer in h["layers"]]  # fmt: skip
    return {key: metrics[key] for key in keys}, usage


@pytest.fixture(scope="module")
def uninterrupted(micro_data):
    return resumable_run(micro_data, base_config("micro", num_epochs=3))


def check_number(where, steps_per_epoch: int, val_batches: int) -> int:
    """The should_stop call (1-based) that lands `where` in a fresh run: one check before
    each training step, one after an epoch's last step, one per evaluation batch (the
    validation set, then the training subset of the same size)."""
    epoch = steps_per_epoch + 1 + 2 * val_batches
    named = {
        "first step": 1,
        "after the last step": steps_per_epoch + 1,  # trained, not yet evaluated
        "first step of epoch 2": epoch + 1,
        "during evaluation": epoch + steps_per_epoch + 1 + 1,  # epoch 2's first val batch
    }
    return named.get(where, where)


@pytest.mark.parametrize(
    "stops",
    [
        pytest.param([9], id="mid-epoch"),
        pytest.param(["first step"], id="first-step"),
        pytest.param(["first step of epoch 2"], id="first-step-of-epoch-2"),
        pytest.param(["after the last step"], id="after-the-last-step"),
        pytest.param(["during evaluation"], id="during-evaluation"),
        pytest.param([5, 11], id="twice"),  # the second counts from the first resume
    ],
)
def test_a_run_stopped_anywhere_resumes_exactly(micro_data, uninterrupted, tmp_path, stops):
    """Stopped at a step boundary and resumed in a fresh trainer, model, optimizer and
    loader (as another process would), the run's losses, routing statistics and weights
    are exactly an uninterrupted run's."""
    base = base_config("micro", num_epochs=3)
    checkpoint = tmp_path / "checkpoint.pt"
    steps_per_epoch = uninterrupted["metrics"]["steps"][0]
    val_batches = -(-len(micro_data.val) // 8)
    seen = []
    for where in stops:
        stop = StopAt(check_number(where, steps_per_epoch, val_batches))
        with pytest.raises(TrainingCancelled) as stopped:
            resumable_run(micro_data, base, checkpoint, stop, on_epoch_end=seen.append)
        assert checkpoint.is_file()
        torch.manual_seed(987)  # the resuming process starts with other RNG state
    if stops == ["during evaluation"]:
        assert stopped.value.step == steps_per_epoch  # all trained; evaluation discarded
    if stops == ["first step of epoch 2"]:
        assert (stopped.value.epoch, stopped.value.step) == (2, 0)
    resumed = resumable_run(micro_data, base, checkpoint, on_epoch_end=seen.append)
    assert exact_metrics(resumed["metrics"]) == exact_metrics(uninterrupted["metrics"])
    assert sorted({r["epoch"] for r in seen}) == [1, 2, 3]
    final = torch.load(checkpoint, weights_only=False)["model"]
    reference = resumable_run(micro_data, base, tmp_path / "reference.pt")
    reference_state = torch.load(tmp_path / "reference.pt", weights_only=False)["model"]
    assert reference["metrics"]["train_losses"] == uninterrupted["metrics"]["train_losses"]
    for name, tensor in reference_state.items():
        assert torch.equal(final[name], tensor), name


def test_a_stop_propagates_out_of_run_single_experiment_after_the_finished_epochs(micro_data):
    seen = []
    steps_per_epoch, val_batches = len(micro_data.train) // 8, -(-len(micro_data.val) // 8)
    stop = StopAt(check_number("first step of epoch 2", steps_per_epoch, val_batches) + 2)
    with pytest.raises(TrainingCancelled) as stopped:  # no checkpoint path: nothing written
        resumable_run(micro_data, base_config("micro", num_epochs=3), stop=stop,
                      on_epoch_end=seen.append)  # fmt: skip
    assert [r["epoch"] for r in seen] == [1]
    assert (stopped.value.epoch, stopped.value.step) == (2, 2)


@pytest.mark.parametrize("n", [1, 3, 5, 6, 7], ids=lambda n: f"check-{n}")
def test_a_loader_without_a_generator_of_its_own_resumes_exactly(tmp_path, n):
    """Such a DataLoader draws its base seed and shuffle from torch's global RNG, which
    dropout draws from too. 4 steps and 1 evaluation batch an epoch: check 5 follows the
    last step, 6 is the evaluation and 7 the first step of epoch 2."""

    def trainer(**kw):
        torch.manual_seed(0)
        return make_trainer(dropout=0.2, schedule={"start": 1.5, "end": 0.5, "epochs": 2}, **kw)

    full = trainer()
    full.train(3)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(TrainingCancelled):
        trainer(hooks=TrainerHooks(should_stop=StopAt(n)),
                checkpointing=Checkpointing(checkpoint)).train(3)  # fmt: skip
    resumed = trainer(checkpointing=Checkpointing(checkpoint))
    torch.manual_seed(987)
    resumed.load_checkpoint(checkpoint)
    resumed.train(3)
    assert exact_metrics(resumed.get_metrics()) == exact_metrics(full.get_metrics())
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


def test_a_checkpoint_with_another_tag_is_not_resumed(micro_data, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    two = base_config("micro", num_epochs=2)
    resumable_run(micro_data, two, checkpoint, tag="run-a")
    seen = []
    with pytest.warns(UserWarning, match="not resuming"):
        other = resumable_run(micro_data, base_config("micro", num_epochs=3), checkpoint,
                              tag="run-b", on_epoch_end=seen.append)  # fmt: skip
    assert [r["epoch"] for r in seen] == [1, 2, 3]  # from scratch
    assert torch.load(checkpoint, weights_only=False)["tag"] == "run-b"
    seen.clear()
    resumable_run(micro_data, base_config("micro", num_epochs=4), checkpoint,
                  tag="run-b", on_epoch_end=seen.append)  # fmt: skip
    assert [r["epoch"] for r in seen] == [4]  # its own checkpoint: resumed
    assert len(other["metrics"]["train_losses"]) == 3


# ---------------------------------------------------------------------------- evaluation


def _eval_with_batch_size(model, val_set, batch_size):
    trainer = Trainer(model, DataLoader(random_blocks(16), batch_size=8),
                      DataLoader(val_set, batch_size=batch_size), torch.optim.SGD(model.parameters()),
                      "cpu", verbose=False)  # fmt: skip
    return trainer.evaluate_loader(trainer.val_loader)


@torch.no_grad()
def _logits_in_batches(model, val_set, batch_size):
    model.eval()
    inputs = val_set.tensors[0]
    return torch.cat(
        [model(inputs[i : i + batch_size])[0] for i in range(0, len(inputs), batch_size)]
    )


def test_validation_loss_and_routing_do_not_depend_on_the_eval_batch_size():
    trainer = make_trainer()
    trainer.train(2)  # a router that has learnt something, not the uniform one at init
    val_set = random_blocks(64, seed=3)
    (small, small_stats), (large, large_stats) = (
        _eval_with_batch_size(trainer.model, val_set, bs) for bs in (8, 32)
    )
    # Every token's output is its own; only float32 rounding may differ (a matmul's kernel,
    # and the order of the sums, depend on the batch's size on some CPUs: 1 ulp seen).
    for key in ("ce_loss", "loss", "aux_loss"):
        assert small[key] == pytest.approx(large[key], rel=1e-6, abs=0), key
    for a, b in zip(small_stats, large_stats, strict=True):
        assert a["usage"] == pytest.approx(b["usage"])
    # what made it depend on them: evaluating at the training capacity drops tokens per batch
    for layer in trainer.moe_layers:
        layer.config = layer.config.model_copy(update={"eval_capacity_factor": 1.0})
    (small_capped, _), (large_capped, _) = (
        _eval_with_batch_size(trainer.model, val_set, bs) for bs in (8, 32)
    )
    assert small_capped["ce_loss"] != large_capped["ce_loss"]
    # per token: capped, a token dropped in one batch and kept in another changes its output
    capped = (_logits_in_batches(trainer.model, val_set, bs) for bs in (8, 32))
    assert (next(capped) - next(capped)).abs().max() > 1e-2
    for layer in trainer.moe_layers:
        layer.config = layer.config.model_copy(update={"eval_capacity_factor": None})
    uncapped = (_logits_in_batches(trainer.model, val_set, bs) for bs in (8, 32))
    assert (next(uncapped) - next(uncapped)).abs().max() < 1e-4
    # over-capacity is still reported without capping: what the training capacity would drop
    assert all(0 < s["dropped"] < 1 for s in small_stats)


def test_every_evaluation_records_eval_mode_training_ce_and_validation_routing():
    trainer = make_trainer(
        dropout=0.5, train_eval_loader=DataLoader(random_blocks(8), batch_size=8)
    )
    seen = []
    trainer.hooks.on_epoch_end = seen.append
    trainer.train(3, eval_every=2)  # evaluates epochs 2 and 3
    m = trainer.get_metrics()
    assert m["val_epochs"] == [2, 3] and len(m["train_eval_ce_losses"]) == 2
    assert [h["epoch"] for h in m["eval_expert_stats_history"]] == [2, 3]
    assert m["best_epoch"] in (2, 3)
    assert m["best_val_ce_loss"] == m["val_ce_losses"][m["val_epochs"].index(m["best_epoch"])]
    # eval mode: no dropout, so it is below the epoch's training-mode average at p = 0.5
    assert m["train_eval_ce_losses"][-1] < m["train_ce_losses"][-1]
    assert seen[0]["train_eval"] is None and seen[0]["eval_expert_stats"] == []
    assert seen[2]["train_eval"] == {"ce_loss": m["train_eval_ce_losses"][-1]}
    assert seen[2]["eval_expert_stats"] == m["eval_expert_stats_history"][-1]["layers"]
    layer = seen[2]["eval_expert_stats"][0]
    assert set(layer) == {
        "layer",
        "entropy",
        "max_entropy",
        "min_usage",
        "max_usage",
        "usage",
        "dropped",
        "imbalance",
    }
    assert sum(layer["usage"]) == pytest.approx(100)
    assert layer["imbalance"] == pytest.approx(len(layer["usage"]) * layer["max_usage"] / 100 - 1)
    # training statistics gain the busiest expert's share of a single step
    train_layer = seen[2]["expert_stats"][0]
    assert train_layer["max_usage"] <= train_layer["max_step_load"] <= 100


def test_a_dense_trainer_records_no_routing_and_a_standalone_evaluate_is_the_last_epochs():
    trainer = make_trainer(moe=False)
    trainer.train(1)
    trainer.evaluate()
    m = trainer.get_metrics()
    assert m["val_epochs"] == [1, 1] and m["eval_expert_stats_history"] == []
    assert m["train_eval_ce_losses"] == [None, None]  # no train_eval_loader given


def test_test_split_is_evaluated_on_the_kept_weights(micro_data):
    base = base_config("micro", num_epochs=2)
    config = ExperimentConfig(name="t", expert_dim=64, batch_size=8)
    result = run_single_experiment(config, micro_data.train, micro_data.val, base, "cpu",
                                   test_dataset=micro_data.test, verbose=False)  # fmt: skip
    assert result["test"]["epoch"] == 2  # no early stopping: the last epoch's weights
    assert (
        result["test"]["ce_loss"] > 0
        and result["test"]["ce_loss"] != result["metrics"]["val_ce_losses"][-1]
    )
    dense = run_single_experiment(config.model_copy(update={"early_stopping_patience": 1}),
                                  micro_data.train, micro_data.val, base, "cpu", dense=True,
                                  test_dataset=micro_data.test, verbose=False)  # fmt: skip
    assert dense["test"]["epoch"] == dense["metrics"]["best_epoch"]
    assert dense["test"]["aux_loss"] == 0.0
