"""Step points (moe_core.step_points): every K steps, the step's own figures, continuing
over epochs and a mid-epoch resume."""

import pytest
import torch

from moe_core import records
from moe_core.checkpoint import Checkpointing
from moe_core.config import ExperimentConfig, base_config
from moe_core.errors import TrainingCancelled
from moe_core.hooks import TrainerHooks
from moe_core.runner import run_single_experiment, steps_per_epoch
from tests.moe_core.test_trainer import StopAt, make_trainer


class Recording:
    """Wraps what the Trainer's steps compute, to compare the points with: each training
    step's losses (the loss step's outputs) and the norm clip_grad_norm_ returned."""

    def __init__(self, trainer, monkeypatch):
        self.losses, self.norms = [], []
        step = trainer.loss_step

        class Step:
            def __getattr__(self, name):
                return getattr(step, name)

            def __call__(inner, x, y, smoothing):
                out = step(x, y, smoothing)
                if trainer.model.training:  # evaluation runs the loss step too
                    self.losses.append([t.item() for t in out[:3]])
                return out

        trainer.loss_step = Step()
        clip = torch.nn.utils.clip_grad_norm_

        def recorded_clip(*args, **kwargs):
            norm = clip(*args, **kwargs)
            self.norms.append(norm.item())
            return norm

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recorded_clip)


def test_points_every_k_steps_carry_the_steps_own_figures(monkeypatch):
    monkeypatch.setattr("moe_core.trainer.GRAD_CLIP", 0.1)  # so that clipping clips
    calls = []
    trainer = make_trainer(hooks=TrainerHooks(on_steps=calls.append, step_metrics_every=3))
    seen = Recording(trainer, monkeypatch)
    trainer.train(3)  # 4 steps an epoch: 12 steps
    points = [p for call in calls for p in call]
    assert all(call for call in calls)  # never called with nothing
    assert list(points[0]) == list(records.keys(records.StepPoint))
    assert [p["step"] for p in points] == [3, 6, 9, 12]
    assert [p["epoch"] for p in points] == [1, 2, 3, 3]
    assert [p["tokens"] for p in points] == [3 * 8 * 16 * k for k in (1, 2, 3, 4)]
    for p in points:
        loss, ce, aux = seen.losses[p["step"] - 1]
        assert (p["loss"], p["ce_loss"], p["aux_loss"]) == pytest.approx((loss, ce, aux), rel=1e-6)
        assert p["grad_norm"] == pytest.approx(seen.norms[p["step"] - 1], rel=1e-6)
        assert p["learning_rate"] == 1e-3
    assert min(seen.norms) > 0.1  # clipping clipped: the point has the norm before it
    walls = [p["wall_time"] for p in points]
    assert walls == sorted(walls) and walls[0] > 0
    # over the points' own intervals: tokens between them / seconds between them
    assert points[1]["tokens_per_sec"] == pytest.approx(3 * 8 * 16 / (walls[1] - walls[0]))


def test_without_a_k_a_run_takes_at_most_2000_points():
    assert records.step_metrics_every(12) == 1
    assert records.step_metrics_every(2000) == 1
    assert records.step_metrics_every(2001) == 2
    assert records.step_metrics_every(200 * 1000) == 100
    calls = []
    trainer = make_trainer()
    trainer.hooks.on_steps = calls.append  # read where it is used, like the other hooks
    trainer.train(2)
    assert [p["step"] for call in calls for p in call] == list(range(1, 9))


def test_points_continue_after_a_mid_epoch_resume_without_duplicates(micro_data, tmp_path):
    config = ExperimentConfig(name="points", expert_dim=64, batch_size=8, dropout=0.1)
    base = base_config("micro", num_epochs=2)
    per_epoch = steps_per_epoch(micro_data.train, 8)
    assert per_epoch >= 6

    def run(points, checkpoint=None, stop=None):
        hooks = TrainerHooks(on_steps=points.extend, step_metrics_every=2, should_stop=stop)
        return run_single_experiment(config, micro_data.train, micro_data.val, base, "cpu",
                                     hooks=hooks, checkpointing=Checkpointing(checkpoint),
                                     verbose=False)  # fmt: skip

    whole: list = []
    run(whole)
    parts: list = []
    ckpt = tmp_path / "ckpt.pt"
    # Stopped before the 6th step of epoch 2 (checks: one per step, one after the last,
    # one per evaluation batch of the validation set and of the training subset).
    val_batches = -(-len(micro_data.val) // 8)
    with pytest.raises(TrainingCancelled):
        run(parts, ckpt, StopAt(per_epoch + 1 + 2 * val_batches + 6))
    stopped_at = parts[-1]["step"]
    assert per_epoch < stopped_at <= per_epoch + 5  # points up to the stop, in epoch 2
    torch.manual_seed(99)  # another process
    run(parts, ckpt)
    steps = [p["step"] for p in parts]
    assert steps == list(range(2, 2 * per_epoch + 1, 2))  # continuing, none twice
    assert [p["tokens"] for p in parts] == [p["tokens"] for p in whole]
    assert [p["epoch"] for p in parts] == [p["epoch"] for p in whole]
    for key in ("loss", "ce_loss", "aux_loss", "grad_norm"):  # the same steps, exactly
        assert [p[key] for p in parts] == pytest.approx([p[key] for p in whole], rel=1e-5), key
    walls = [p["wall_time"] for p in parts]
    assert walls == sorted(walls)  # the clock continues over the resume
    assert all(p["tokens_per_sec"] > 0 for p in parts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA path needs a GPU")
def test_on_a_gpu_points_arrive_without_a_sync_per_step(monkeypatch):
    """Points are delivered as their copies complete, not by synchronising: the Trainer
    syncs twice an epoch (a segment's start and close), whatever the number of points."""
    syncs = []
    synchronize = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: (syncs.append(1), synchronize(*a)))
    base = base_config("micro", seq_len=16, learning_rate=1e-3)
    config = ExperimentConfig(name="t", expert_dim=64, batch_size=8)
    from torch.utils.data import DataLoader

    from moe_core.runner import build_model, build_optimizer
    from moe_core.trainer import Trainer
    from tests.moe_core.test_trainer import random_blocks

    model = build_model(config, base).to("cuda")
    calls: list = []
    trainer = Trainer(model, DataLoader(random_blocks(64), batch_size=8, shuffle=True),
                      DataLoader(random_blocks(8, seed=1), batch_size=8),
                      build_optimizer(model, config, base), "cuda", verbose=False,
                      hooks=TrainerHooks(on_steps=calls.append, step_metrics_every=1))  # fmt: skip
    trainer.train(2)
    points = [p for call in calls for p in call]
    assert [p["step"] for p in points] == list(range(1, 17))
    assert len(syncs) <= 4  # two epochs, two syncs each
    assert all(p["grad_norm"] > 0 and p["tokens_per_sec"] > 0 for p in points)
    walls = [p["wall_time"] for p in points]
    assert walls == sorted(walls)
