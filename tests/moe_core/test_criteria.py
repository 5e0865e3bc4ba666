"""Verdicts that say what the trained model does, over seeds, with error bars."""

import json
import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from moe_core.config import ExperimentConfig, base_config
from moe_core.criteria import format_table, format_verdict, judge, judge_seeds, mean_se
from moe_core.runner import build_model, build_optimizer, count_parameters
from moe_core.study import main
from moe_core.trainer import Trainer

from .test_experiments import _result
from .test_trainer import random_blocks


class SwingingRouter(nn.Module):
    """A router gone wrong: each training step sends every token to the next expert in
    turn, so the epoch's sums look perfectly balanced, while the trained model (eval mode)
    sends every token to expert 0."""

    def __init__(self, num_experts: int):
        super().__init__()
        self.num_experts, self.step = num_experts, 0

    def set_temperature(self, temperature: float) -> None:
        pass  # it routes by turn, not by its logits' scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        favourite = self.step % self.num_experts if self.training else 0
        if self.training:
            self.step += 1
        logits = torch.zeros(x.size(0), self.num_experts)
        logits[:, favourite] = 10.0
        return logits


def test_a_collapsed_router_fails_tertiary_though_its_training_sums_look_balanced():
    base = base_config("micro", seq_len=16)
    config = ExperimentConfig(name="swing", expert_dim=64, batch_size=8, dropout=0.0)
    model = build_model(config, base)
    for layer in model.moe_layers:
        layer.router = SwingingRouter(layer.num_experts)
    # 8 steps an epoch: each expert takes every token of exactly one step
    train = DataLoader(random_blocks(64), batch_size=8, shuffle=True)
    val = DataLoader(random_blocks(16, seed=1), batch_size=8)
    trainer = Trainer(model, train, val, build_optimizer(model, config, base), "cpu",
                      train_eval_loader=DataLoader(random_blocks(16), batch_size=8), verbose=False)  # fmt: skip
    metrics = trainer.train(1)
    trained = metrics["expert_stats_history"][-1]["layers"]
    assert all(s["min_usage"] == pytest.approx(12.5) for s in trained)  # looks balanced...
    assert all(s["max_step_load"] == 100.0 for s in trained)  # ...one step at a time
    final = metrics["eval_expert_stats_history"][-1]["layers"]
    assert all(s["min_usage"] == 0.0 and s["max_usage"] == 100.0 for s in final)
    # the training capacity (1.25 x a fair share) would drop 1 - 1.25/8 of the tokens
    assert all(s["dropped"] == pytest.approx(1 - 1.25 / 8, abs=0.01) for s in final)

    result = {"config": config.to_dict(), "metrics": metrics, "params": count_parameters(model)}
    dense = _result(val=[99.0], train=[98.0])  # a baseline it beats on loss
    verdict = judge(result, dense)
    assert verdict["primary"]["passed"]
    assert not verdict["tertiary"]["passed"] and not verdict["passed"]
    layer = verdict["tertiary"]["layers"][0]
    assert layer["min_usage"] == 0.0 and not layer["all_experts_used"]
    assert layer["dropped"] == pytest.approx(1 - 1.25 / 8, abs=0.01)
    assert layer["train_max_step_load"] == 100.0
    assert "over capacity 84.4%" in format_verdict("swing", verdict)


def test_the_gap_is_eval_mode_training_ce_not_the_dropout_inflated_average():
    result = _result(val=[4.0], train=[3.5])  # eval-mode train CE 3.5; training-mode 4.0
    assert result["metrics"]["train_ce_losses"] == [4.0]
    verdict = judge(result, _result(val=[4.1], train=[3.1]))
    assert verdict["primary"]["val_gap"] == pytest.approx(0.5)  # not 0.0
    assert verdict["primary"]["dense_val_gap"] == pytest.approx(1.0)
    assert verdict["primary"]["gap_reduction"] == pytest.approx(0.5)


def _seeded(deltas, dense_loss=4.0, gap=1.0, dense_gap=1.0):
    runs = [_result(val=[dense_loss + d], train=[dense_loss + d - gap]) for d in deltas]
    dense = [_result(val=[dense_loss], train=[dense_loss - dense_gap]) for _ in deltas]
    return runs, dense


def test_mean_and_standard_error():
    stat = mean_se([1.0, 2.0, 3.0, None, float("nan")])
    assert stat["mean"] == 2.0 and stat["n"] == 3
    assert stat["se"] == pytest.approx(1.0 / math.sqrt(3))
    assert mean_se([1.0])["se"] is None


def test_seeds_give_a_paired_difference_with_its_standard_error_and_significance():
    runs, dense = _seeded([-0.05, -0.04, -0.06])
    verdict = judge_seeds(runs, dense)
    delta = verdict["primary"]["val_loss_delta"]
    assert delta["n"] == 3 and delta["mean"] == pytest.approx(-0.05)
    assert delta["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert verdict["passed"] and verdict["significant"] is True
    assert len(verdict["per_seed"]) == 3 and verdict["seeds"] == 3
    assert "significant: beyond 2 standard errors over 3 seeds" in format_verdict("x", verdict)

    noisy = judge_seeds(*_seeded([-0.05, 0.04, -0.02]))  # mean -0.01, SE 0.027
    assert noisy["passed"] and noisy["significant"] is False  # the spec's rule on the means...
    assert "NOT significant" in format_verdict("x", noisy)  # ...but within seed noise

    worse = judge_seeds(*_seeded([0.05, 0.06, 0.04]))
    assert not worse["passed"] and worse["significant"] is True  # worse beyond noise


def test_passing_by_the_gap_is_significant_only_if_the_gap_difference_is():
    runs, dense = _seeded([0.01, 0.02, 0.0], gap=0.5, dense_gap=1.0)  # worse loss, half the gap
    verdict = judge_seeds(runs, dense)
    assert verdict["passed"] and not verdict["primary"]["beats_dense_loss"]
    assert verdict["primary"]["gap_reduction"] == pytest.approx(0.5)
    assert verdict["primary"]["gap_delta"]["mean"] == pytest.approx(-0.5)
    assert verdict["significant"] is True  # identical gaps in every seed: SE 0


def test_one_seed_says_significance_is_unknown():
    verdict = judge_seeds(*_seeded([-0.05]))
    assert verdict["significant"] is None and "significance unknown" in verdict["significance_note"]
    assert verdict["primary"]["passed"]
    assert judge(*[x[0] for x in _seeded([-0.05])])["significant"] is None
    with pytest.raises(ValueError, match="pair them by seed"):
        judge_seeds(*_seeded([-0.05, 0.0])[:1], [])


def test_tertiary_over_seeds_needs_every_seed():
    runs, dense = _seeded([-0.05, -0.05])
    runs[1] = _result(val=[3.95], train=[2.95], usage=(50, 50, 0, 0, 0, 0, 0, 0))
    verdict = judge_seeds(runs, dense)
    assert not verdict["tertiary"]["passed"] and verdict["tertiary"]["seeds_passed"] == 1
    assert verdict["tertiary"]["min_usage"] == 0


def test_a_two_seed_micro_study_reports_differences_with_error_bars(micro_base, tmp_path, capsys):
    base = micro_base.model_copy(update={"num_epochs": 1})
    summary = main(base, tmp_path, experiments=["baseline"], device="cpu", seeds=2)
    verdict = summary["verdicts"]["baseline"]
    delta = verdict["primary"]["val_loss_delta"]
    assert delta["n"] == 2 and delta["se"] is not None and delta["se"] > 0
    assert isinstance(verdict["significant"], bool)
    per_seed = [v["primary"]["val_loss_delta"] for v in verdict["per_seed"]]
    assert delta["mean"] == pytest.approx(sum(per_seed) / 2)
    assert per_seed[0] != per_seed[1]  # the seeds really differ
    saved = json.loads((tmp_path / "experiment_results.json").read_text())
    assert saved["seeds"] == [base.seed, base.seed + 1]
    assert [r["seed"] for r in saved["runs"]["baseline"]] == saved["seeds"]
    assert [r["seed"] for r in saved["runs"]["dense"]] == saved["seeds"]
    assert (tmp_path / f"dense_model.seed{base.seed + 1}.pt").is_file()
    out = capsys.readouterr().out
    assert "±" in out and "(means over 2 seeds" in out and "sig " in out
    assert saved["table"] == format_table(saved["runs"]["dense"], {"baseline": saved["runs"]["baseline"]},
                                          saved["verdicts"])  # fmt: skip
