"""moe_core.together: seeds trained together as one stacked model give what separate runs
give. Tolerance: every loss within 1e-4 (absolute, in nats; measured: ~1e-6, the batched
matmuls' float32 rounding), every expert usage within 1e-3 percentage points and every count
(dropped, steps, epochs, best epoch) equal, verdicts equal in pass/fail; at dropout 0, since
dropout masks are drawn from other random numbers together than apart."""

import math

import pytest
import torch

from moe_core.config import base_config, dense_config, get_experiment_configs
from moe_core.criteria import judge_seeds
from moe_core.data import TokenBlocks
from moe_core.errors import TrainingCancelled
from moe_core.hooks import TrainerHooks
from moe_core.runner import run_single_experiment
from moe_core.together import run_together

LOSS_TOL = 1e-4
USAGE_TOL = 1e-3  # percentage points
SEEDS = (1, 2, 3)
PRESETS = ("dense", "baseline", "top2", "dropless", "fine_grained")  # dense, top-1, ...


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny steps, one thread


def blocks(n: int, seed: int) -> TokenBlocks:
    tokens = torch.randint(0, 512, (33 * n,), generator=torch.Generator().manual_seed(seed))
    return TokenBlocks(tokens, seq_len=32)


TRAIN, VAL = blocks(24, 0), blocks(8, 1)  # 3 steps of 8 blocks per epoch


def micro(**overrides):
    return base_config("micro", num_layers=2, moe_layers=[1], **overrides)


def preset(name, base, **overrides):
    config = dense_config(base) if name == "dense" else get_experiment_configs(base)[name]
    return config.model_copy(update=dict(dropout=0.0, batch_size=8, **overrides))


def apart(config, bases, dense, hooks=None):
    """Each seed's run_single_experiment, or what it raised."""
    out = []
    for i, base in enumerate(bases):
        try:
            out.append(run_single_experiment(config, TRAIN, VAL, base, "cpu", dense=dense,
                                             hooks=hooks[i] if hooks else None,
                                             test_dataset=VAL, verbose=False))  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            out.append(exc)
    return out


def assert_same_run(a, b):
    """b (trained together) is a (trained apart), to the stated tolerance."""
    assert set(b) - set(a) == {"together"} and not set(a) - set(b)
    for key in ("config", "params", "active_params", "evaluation", "seed", "device",
                "precision", "compile", "base", "parallel"):  # fmt: skip
        assert b[key] == a[key], key
    assert b["test"]["epoch"] == a["test"]["epoch"]
    for key in ("loss", "ce_loss", "aux_loss"):
        assert b["test"][key] == pytest.approx(a["test"][key], abs=LOSS_TOL)
    ma, mb = a["metrics"], b["metrics"]
    for key in ("train_losses", "val_losses", "train_ce_losses", "val_ce_losses",
                "train_aux_losses", "val_aux_losses", "train_eval_ce_losses"):  # fmt: skip
        assert mb[key] == pytest.approx(ma[key], abs=LOSS_TOL), key
    for key in ("steps", "current_step", "val_epochs", "best_epoch", "stopped_early",
                "patience_counter"):  # fmt: skip
        assert mb[key] == ma[key], key
    assert mb["best_val_loss"] == pytest.approx(ma["best_val_loss"], abs=LOSS_TOL)
    for history in ("expert_stats_history", "eval_expert_stats_history"):
        assert len(mb[history]) == len(ma[history])
        for ea, eb in zip(ma[history], mb[history], strict=True):
            for la, lb in zip(ea["layers"], eb["layers"], strict=True):
                assert lb["usage"] == pytest.approx(la["usage"], abs=USAGE_TOL)
                for key, value in la.items():
                    if key != "usage":
                        assert lb[key] == pytest.approx(value, abs=USAGE_TOL), (history, key)


@pytest.fixture(scope="module")
def runs():
    """name -> (results apart, results together), each computed once."""
    cache = {}

    def get(name):
        if name not in cache:
            base = micro()
            bases = [base.model_copy(update={"seed": s}) for s in SEEDS]
            config = preset(name, base)
            dense = name == "dense"
            together = run_together(config, TRAIN, VAL, bases, "cpu", dense=dense,
                                    test_dataset=VAL, verbose=False)  # fmt: skip
            cache[name] = (apart(config, bases, dense), together)
        return cache[name]

    return get


@pytest.mark.parametrize("name", PRESETS)
def test_seeds_together_match_seeds_apart(runs, name):
    separate, together = runs(name)
    assert [r["together"] for r in together] == [{"replicas": 3, "index": i} for i in range(3)]
    for a, b in zip(separate, together, strict=True):
        assert_same_run(a, b)
    if name != "dense":  # the verdict against dense: the same, pass or fail
        dense_apart, dense_together = runs("dense")
        assert (judge_seeds(together, dense_together)["passed"]
                == judge_seeds(separate, dense_apart)["passed"])  # fmt: skip


def test_a_replica_stopped_failed_or_cancelled_leaves_the_others_as_apart(tmp_path):
    """Seed 1 stops early after epoch 2 (its best: 1), seed 2 is cancelled in epoch 2, seed
    5's epoch hook raises in epoch 1; seed 8 trains its 4 epochs as it would alone, its
    epoch records and step points too. top2 with the expert bias: the stack's buffers and
    AdamW state shrink with it."""
    base = micro(num_epochs=4, learning_rate=3e-3)
    config = preset("top2", base, early_stopping_patience=1, aux_free_bias_rate=1e-3)
    seeds = (1, 8, 2, 5)
    bases = [base.model_copy(update={"seed": s}) for s in seeds]

    def hooks(records, points):
        calls = {"stop": 0}

        def should_stop():  # True at its 8th call: epoch 2, before its 2nd step (epoch 1:
            calls["stop"] += 1  # 3 steps, the end of its batches, 2 evaluation batches)
            return calls["stop"] >= 8

        def broken(record):
            raise RuntimeError("the store is down")

        return [
            TrainerHooks(),
            TrainerHooks(
                on_epoch_end=records.append, on_steps=points.extend, step_metrics_every=1
            ),  # fmt: skip
            TrainerHooks(should_stop=should_stop),
            TrainerHooks(on_epoch_end=broken),
        ]

    records_a, points_a, records_b, points_b = [], [], [], []
    separate = apart(config, bases, False, hooks(records_a, points_a))
    paths = [tmp_path / f"{s}.pt" for s in seeds]
    together = run_together(config, TRAIN, VAL, bases, "cpu", hooks=hooks(records_b, points_b),
                            model_paths=paths, test_dataset=VAL, verbose=False)  # fmt: skip
    # the precondition: seed 1 stopped while seed 3 went on
    assert separate[0]["metrics"]["val_epochs"] == [1, 2]
    assert separate[1]["metrics"]["val_epochs"] == [1, 2, 3, 4]
    for i in (0, 1):
        assert_same_run(separate[i], together[i])
    assert together[0]["test"]["epoch"] == 1  # the best epoch's weights, as alone
    cancelled = together[2]
    assert isinstance(cancelled, TrainingCancelled) and isinstance(separate[2], TrainingCancelled)
    assert (cancelled.epoch, cancelled.step) == (separate[2].epoch, separate[2].step) == (2, 1)
    assert isinstance(together[3], RuntimeError) and str(together[3]) == "the store is down"
    assert not paths[2].exists() and not paths[3].exists()
    # seed 8's rows: what its own run wrote
    assert [r["epoch"] for r in records_b] == [r["epoch"] for r in records_a] == [1, 2, 3, 4]
    for ra, rb in zip(records_a, records_b, strict=True):
        assert rb["val"]["loss"] == pytest.approx(ra["val"]["loss"], abs=LOSS_TOL)
        assert rb["expert_stats"][0]["usage"] == pytest.approx(
            ra["expert_stats"][0]["usage"], abs=USAGE_TOL
        )
    assert [p["step"] for p in points_b] == [p["step"] for p in points_a] == list(range(1, 13))
    for pa, pb in zip(points_a, points_b, strict=True):
        for key in ("loss", "ce_loss", "aux_loss", "grad_norm"):
            assert pb[key] == pytest.approx(pa[key], abs=LOSS_TOL), key
    # the saved weights are each seed's own GPT state dict, its kept (best) epoch's
    saved = torch.load(paths[0])
    assert set(saved) >= {"tok_emb.weight", "lm_head.weight", "blocks.1.ffn.expert_bias"}
    assert saved["blocks.1.ffn.experts.w1"].shape == (8, 32, 64)
    assert math.isfinite(together[1]["test"]["loss"])


def test_seeds_together_must_differ_in_seed_alone():
    bases = [micro(seed=1), micro(seed=2, learning_rate=1e-2)]
    with pytest.raises(ValueError, match="base.learning_rate"):
        run_together(preset("baseline", bases[0]), TRAIN, VAL, bases, "cpu", verbose=False)
