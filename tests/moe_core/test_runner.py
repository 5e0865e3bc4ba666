"""moe_core.runner: one experiment, with the spec's keys and ours."""

import torch

import moe_core
from moe_core.config import ExperimentConfig
from moe_core.model import GPT, GPTConfig
from moe_core.runner import count_parameters, run_single_experiment


def test_public_names():
    for name in ("Trainer", "ExperimentConfig", "get_experiment_configs", "run_single_experiment",
                 "evaluate_success_criteria", "count_parameters", "main"):  # fmt: skip
        assert callable(getattr(moe_core, name)), name


def test_count_parameters_counts_trainable_only_and_tied_once():
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=4, ffn_dim=8))
    expected = 50 * 4 + 8 * 4 + 2 * 4 * 2 + 3 * 4 * 4 + 4 * 4 + 2 * 4 * 8 + 2 * 4
    assert count_parameters(model) == expected
    model.pos_emb.weight.requires_grad_(False)
    assert count_parameters(model) == expected - 8 * 4


def test_run_single_experiment_returns_config_metrics_params(micro_data, micro_base, tmp_path):
    config = ExperimentConfig(name="top2", expert_dim=64, top_k=2, capacity_factor=2.5)
    result = run_single_experiment(config, micro_data.train, micro_data.val, micro_base, "cpu",
                                   model_path=tmp_path / "m.pt", verbose=False)  # fmt: skip
    assert set(result) >= {"config", "metrics", "params"}  # the spec's keys, and ours:
    assert set(result) - {"config", "metrics", "params"} == {
        "active_params",
        "test",
        "evaluation",
        "seed",
        "device",
        "precision",
        "compile",
        "parallel",
        "base",
    }
    # how it ran: precision auto is float32 on the CPU, compile off by default, one process
    assert (result["device"], result["precision"], result["compile"]) == ("cpu", "fp32", "off")
    assert result["parallel"] == {"gpus": 1, "expert_parallel": 1}
    # the base it ran on: what a verdict checks a baseline's comparability against
    assert result["base"] == micro_base.model_dump(mode="json")
    assert result["config"] == config.to_dict()
    assert len(result["metrics"]["train_losses"]) == micro_base.num_epochs
    assert result["params"] > 0
    # a token passes through 2 of the 8 experts of each of the 2 MoE layers
    per_expert = 2 * micro_base.hidden_dim * 64
    assert result["active_params"] == result["params"] - 2 * 6 * per_expert
    assert result["test"] is None  # no test set given
    assert result["evaluation"] == {
        "capacity_factor": None,
        "train_subset_blocks": len(micro_data.val),
    }
    assert set(torch.load(tmp_path / "m.pt")) >= {"tok_emb.weight", "blocks.2.ffn.experts.w1"}
