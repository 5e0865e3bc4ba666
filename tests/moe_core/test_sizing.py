"""moe_core.sizing: a run's size from its configs alone (what the API's dry run answers),
held to the modules the engine builds."""

import pytest
import torch

from moe_core.config import base_config, dense_config, get_experiment_configs
from moe_core.runner import build_model, count_parameters
from moe_core.sizing import memory_estimate, parameters, train_flops_per_token


def active_on_the_modules(model) -> int:
    """Parameters a token passes through, counted on the modules: all but, in each MoE
    layer, the experts it is not routed to."""
    total = count_parameters(model)
    for layer in model.moe_layers:
        per_expert = layer.experts.w1[0].numel() + layer.experts.w2[0].numel()
        total -= (layer.num_experts - layer.top_k) * per_expert
    return total


def build(preset: str, experiment: str):
    base = base_config(preset, num_experts=4, moe_layers=[1, 3])
    dense = experiment == "dense"
    config = dense_config(base) if dense else get_experiment_configs(base)[experiment]
    if experiment == "top2":
        config = config.model_copy(update={"expert_dim": base.ffn_dim // 2})
    with torch.device("meta"):  # shapes only: the spec's model allocates nothing
        model = build_model(config, base, dense=dense)
    return config, base, dense, model


@pytest.mark.parametrize("preset", ["micro", "tiny", "spec"])
@pytest.mark.parametrize(
    "experiment", ["dense", "baseline", "top2", "throughput_opt", "shared_expert", "fine_grained"]
)
def test_parameters_are_the_models_count(preset, experiment):
    config, base, dense, model = build(preset, experiment)
    assert parameters(config, base, dense=dense) == (
        count_parameters(model),
        active_on_the_modules(model),
    )


@pytest.mark.parametrize("experiment", ["dense", "baseline", "top2", "fine_grained"])
def test_flops_per_token_are_six_times_the_active_matmul_parameters_plus_attention(experiment):
    config, base, dense, model = build("spec", experiment)
    matmul = active_on_the_modules(model) - model.pos_emb.weight.numel()
    attention = 12 * base.num_layers * base.hidden_dim * base.seq_len  # PaLM, appendix B
    assert train_flops_per_token(config, base, dense=dense) == 6 * matmul + attention


def test_the_memory_estimate_counts_weights_and_adam_exactly_and_grows_with_the_batch():
    config, base, dense, model = build("spec", "baseline")
    n = count_parameters(model)
    bf16 = memory_estimate(config, base, dense=False, precision="bf16")
    assert bf16["parameters"] == 4 * n and bf16["gradients_and_optimizer"] == 12 * n
    assert bf16["autocast_weights"] == 2 * n
    fp32 = memory_estimate(config, base, dense=False, precision="fp32")
    assert fp32["activations"] > bf16["activations"] and fp32["autocast_weights"] == 0
    larger = memory_estimate(config.model_copy(update={"batch_size": 64}), base, dense=False)
    assert larger["activations"] > 3.9 * bf16["activations"]  # ~linear in the batch
    assert bf16["total"] > sum(v for k, v in bf16.items() if k != "total")


def test_the_memory_estimate_of_seeds_together_is_the_stacks():
    """Three seeds trained together hold three replicas' weights, AdamW state and
    activations: the stack's parameters, counted on it, are three models'."""
    from moe_core.stacked import StackedGPT

    config, base, dense, model = build("micro", "top2")
    one = memory_estimate(config, base, dense=False)
    three = memory_estimate(config, base, dense=False, replicas=3)
    stack = StackedGPT([model] * 3)
    assert three["parameters"] == 4 * count_parameters(stack) == 3 * one["parameters"]
    for key in ("gradients_and_optimizer", "autocast_weights", "activations"):
        assert three[key] == 3 * one[key], key
    assert three["total"] == pytest.approx(3 * one["total"], abs=3)
