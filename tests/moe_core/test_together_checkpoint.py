"""moe_core.together_checkpoint: a stack's checkpoints are single runs' and resume both ways.
Two seeds, three epochs of three steps, at dropout 0 (test_together's tolerances); every
resume is seen to resume (its epoch records start at 2), not to train afresh."""

import shutil

import pytest
import torch

from moe_core.checkpoint import Checkpointing, read_checkpoint
from moe_core.errors import CheckpointMismatch, TrainingCancelled
from moe_core.hooks import TrainerHooks
from moe_core.runner import run_single_experiment
from moe_core.together import run_together

from .test_together import TRAIN, VAL, assert_same_run, micro, preset

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny steps, one thread

SEEDS = (1, 2)
BASES = [micro(num_epochs=3, seed=s) for s in SEEDS]
CONFIG = preset("top2", BASES[0], aux_free_bias_rate=1e-3)  # a buffer (expert bias) too


def tag(seed):
    return f"run-{seed}"


def assert_same(a, b):
    """Two results alike, each trained apart or together."""
    assert_same_run({k: v for k, v in a.items() if k != "together"}, {**b, "together": None})


def recorder(epochs):
    return TrainerHooks(on_epoch_end=lambda record: epochs.append(record["epoch"]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each seed apart (its checkpoint copied at epochs 1 and 2), the stack uninterrupted,
    and the stack stopped in epoch 2 (its checkpoints, epoch 1's)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    apart = []
    for base in BASES:
        path = tmp / f"apart{base.seed}.pt"

        def copy(record, path=path, seed=base.seed):  # the checkpoint is written after the
            if record["epoch"] > 1:  # hook: the file holds the epoch before
                shutil.copy(path, tmp / f"apart{seed}-epoch{record['epoch'] - 1}.pt")

        apart.append(run_single_experiment(CONFIG, TRAIN, VAL, base, "cpu",
                                           hooks=TrainerHooks(on_epoch_end=copy),
                                           checkpointing=Checkpointing(path, tag(base.seed)),
                                           test_dataset=VAL, verbose=False))  # fmt: skip
    together = run_together(CONFIG, TRAIN, VAL, BASES, "cpu", test_dataset=VAL, verbose=False)
    stop_in_epoch_2(CONFIG, [Checkpointing(tmp / f"stack{s}.pt", tag(s)) for s in SEEDS])
    return tmp, apart, together


def stop_in_epoch_2(config, saves):
    """The stack, stopped after the first step of epoch 2 (a shutdown: both seeds)."""
    steps = {"n": 0}

    def count(points):
        steps["n"] += len(points)

    hooks = [TrainerHooks(should_stop=lambda: steps["n"] >= 2 * 4, on_steps=count,
                          step_metrics_every=1) for _ in SEEDS]  # fmt: skip
    stopped = run_together(config, TRAIN, VAL, BASES, "cpu", hooks=hooks, checkpointing=saves,
                           test_dataset=VAL, verbose=False)  # fmt: skip
    assert all(isinstance(r, TrainingCancelled) and (r.epoch, r.step) == (2, 1) for r in stopped)


def copied(tmp_path, source):
    return shutil.copy(source, tmp_path / source.name)  # a resume rewrites its checkpoint


def test_a_seeds_checkpoint_from_a_stack_is_a_runs(trained, tmp_path):
    tmp, apart, _ = trained
    for i, s in enumerate(SEEDS):
        stack, run = (
            read_checkpoint(tmp / f"stack{s}.pt", None),
            read_checkpoint(tmp / f"apart{s}-epoch1.pt", None),
        )
        assert set(stack) == set(run) and stack["tag"] == tag(s) and stack["progress"] is None
        assert stack["history"]["epoch"] == 1 and set(stack["model"]) == set(run["model"])
        for key, value in run["model"].items():
            assert torch.allclose(stack["model"][key], value, atol=1e-5), key
        assert stack["optimizer"]["param_groups"] == run["optimizer"]["param_groups"]
        for index, state in run["optimizer"]["state"].items():
            for key, value in state.items():
                assert torch.allclose(stack["optimizer"]["state"][index][key], value,
                                      atol=1e-6), (index, key)  # fmt: skip
        epochs = []
        resumed = run_single_experiment(CONFIG, TRAIN, VAL, BASES[i], "cpu", hooks=recorder(epochs),
                                        checkpointing=Checkpointing(copied(tmp_path, tmp / f"stack{s}.pt"), tag(s)),
                                        test_dataset=VAL, verbose=False)  # fmt: skip
        assert epochs == [2, 3]
        assert_same(apart[i], resumed)


def test_a_stack_stopped_in_an_epoch_resumes_from_the_last(trained, tmp_path):
    tmp, _, together = trained
    epochs = [[], []]
    saves = [Checkpointing(copied(tmp_path, tmp / f"stack{s}.pt"), tag(s)) for s in SEEDS]
    resumed = run_together(CONFIG, TRAIN, VAL, BASES, "cpu", hooks=[recorder(e) for e in epochs],
                           checkpointing=saves, test_dataset=VAL, verbose=False)  # fmt: skip
    assert epochs == [[2, 3], [2, 3]]
    for a, b in zip(together, resumed, strict=True):
        assert_same(a, b)
    assert read_checkpoint(saves[0].path, None)["history"]["epoch"] == 3  # rewritten at every epoch


def test_a_stack_resumed_from_its_own_checkpoints_draws_what_it_would_have(tmp_path):
    """Dropout and router jitter: the stack's one global RNG, resumed from the checkpoints."""
    config = CONFIG.model_copy(update={"dropout": 0.1, "router_jitter": 0.05})
    together = run_together(config, TRAIN, VAL, BASES, "cpu", test_dataset=VAL, verbose=False)
    saves = [Checkpointing(tmp_path / f"{s}.pt", tag(s)) for s in SEEDS]
    stop_in_epoch_2(config, saves)
    resumed = run_together(config, TRAIN, VAL, BASES, "cpu", checkpointing=saves,
                           test_dataset=VAL, verbose=False)  # fmt: skip
    for a, b in zip(together, resumed, strict=True):
        assert b["metrics"]["train_losses"] == a["metrics"]["train_losses"]  # the same draws
        assert_same(a, b)


def test_runs_checkpoints_resume_in_a_stack(trained, tmp_path):
    """Seed 1 from its run's epoch 1; seed 2's run was done: it leaves with its weights."""
    tmp, apart, _ = trained
    sources = [tmp / "apart1-epoch1.pt", tmp / "apart2.pt"]
    epochs = [[], []]
    saves = [
        Checkpointing(copied(tmp_path, p), tag(s)) for p, s in zip(sources, SEEDS, strict=True)
    ]
    resumed = run_together(CONFIG, TRAIN, VAL, BASES, "cpu", hooks=[recorder(e) for e in epochs],
                           checkpointing=saves, test_dataset=VAL, verbose=False)  # fmt: skip
    assert epochs == [[2, 3], []]
    for a, b in zip(apart, resumed, strict=True):
        assert_same(a, b)


def test_a_stack_resumes_from_one_epoch_and_its_own_runs_only(trained, tmp_path):
    tmp = trained[0]

    def resume(*sources):
        saves = [Checkpointing(tmp_path / f"{s}.pt", tag(s), resume_from=source)
                 for s, source in zip(SEEDS, sources, strict=True)]  # fmt: skip
        run_together(CONFIG, TRAIN, VAL, BASES, "cpu", checkpointing=saves, verbose=False)

    with pytest.raises(ValueError, match=r"seed 1\) after epoch 1, .*seed 2\) after epoch 2"):
        resume(tmp / "apart1-epoch1.pt", tmp / "apart2-epoch2.pt")
    with pytest.raises(ValueError, match=r"seed 2\) after epoch 0"):
        resume(tmp / "apart1-epoch1.pt", None)
    with pytest.raises(CheckpointMismatch, match="belongs to 'run-1', not 'run-2'"):
        resume(tmp / "apart1-epoch1.pt", tmp / "apart1-epoch1.pt")
    mid = tmp_path / "mid.pt"  # a run stopped within epoch 1, after a step
    calls = iter([False, True])
    with pytest.raises(TrainingCancelled):
        run_single_experiment(CONFIG, TRAIN, VAL, BASES[0], "cpu",
                              hooks=TrainerHooks(should_stop=lambda: next(calls)),
                              checkpointing=Checkpointing(mid, tag(1)), verbose=False)  # fmt: skip
    with pytest.raises(ValueError, match="within epoch 1"):
        resume(mid, None)
