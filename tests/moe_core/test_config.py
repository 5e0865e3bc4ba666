import subprocess
import sys

import pytest
from pydantic import ValidationError

from moe_core.config import (
    BASE_PRESETS,
    SPEC_EXPERIMENTS,
    BaseConfig,
    ExperimentConfig,
    GatingTempSchedule,
    MoEConfig,
    RoutingConfig,
    base_config,
    dense_config,
    get_experiment_configs,
)


def test_experiment_config_has_exactly_the_spec_fields_and_defaults():
    c = ExperimentConfig(name="x", expert_dim=1024)
    assert c.to_dict() == {
        "name": "x",
        "expert_dim": 1024,
        "top_k": 1,
        "aux_weight": 0.01,
        "capacity_factor": 1.25,
        "dropout": 0.1,
        "weight_decay": 0.0,
        "label_smoothing": 0.0,
        "batch_size": 16,
        "early_stopping_patience": 0,
        "gating_temp_schedule": None,
        # the routing options (docs/routing-options.md), each off
        "num_experts": None,
        "dropless": False,
        "router_z_loss": 0.0,
        "router_jitter": 0.0,
        "num_shared_experts": 0,
        "aux_free_bias_rate": 0.0,
    }


def test_the_routing_fields_are_declared_once_and_an_moe_layer_has_exactly_the_experiments():
    """MoEConfig (what each MoE layer is built from) and ExperimentConfig extend one class,
    RoutingConfig: a routing field redeclared, dropped or bounded otherwise in either fails."""
    assert issubclass(ExperimentConfig, RoutingConfig) and issubclass(MoEConfig, RoutingConfig)
    routing = set(RoutingConfig.model_fields)
    assert routing == {"expert_dim", "top_k", "capacity_factor", "aux_weight", "router_z_loss",
                       "dropless", "router_jitter", "num_shared_experts", "aux_free_bias_rate"}  # fmt: skip
    assert set(MoEConfig.model_fields) - routing == {"num_experts", "eval_capacity_factor"}
    assert routing <= set(ExperimentConfig.model_fields)
    for name in routing:
        ours, theirs = MoEConfig.model_fields[name], ExperimentConfig.model_fields[name]
        assert ours.annotation == theirs.annotation, name
        assert ours.default == theirs.default, name
        assert ours.metadata == theirs.metadata, name  # the bounds (gt, ge, lt)
        assert ours.description == theirs.description, name
    # What an experiment hands its layers: its routing fields, the count resolved on the base
    config = ExperimentConfig(name="x", expert_dim=64, top_k=2, router_jitter=0.01)
    moe = config.moe(BaseConfig(num_experts=4))
    assert moe.model_dump(include=routing) == config.model_dump(include=routing)
    assert (moe.num_experts, moe.eval_capacity_factor) == (4, None)
    with pytest.raises(ValidationError, match="frozen"):
        moe.top_k = 1
    with pytest.raises(ValidationError, match="top_k_over_experts"):
        MoEConfig(num_experts=1, expert_dim=8, top_k=2)


def test_base_config_holds_the_spec_main_hyperparameters():
    b = BaseConfig()
    assert (b.seq_len, b.batch_size, b.hidden_dim, b.num_layers, b.num_heads) == (
        256,
        16,
        256,
        6,
        8,
    )
    assert (b.ffn_dim, b.num_epochs, b.learning_rate, b.vocab_size, b.num_experts) == (
        1024,
        20,
        3e-4,
        10000,
        8,
    )
    assert b.moe_layers == [2, 4]
    assert b.dense_patience == 3


def test_spec_experiment_configs():
    configs = get_experiment_configs()
    assert list(configs)[:4] == list(SPEC_EXPERIMENTS) == ["baseline", "top2", "strong_reg",
                                                           "throughput_opt"]  # fmt: skip
    configs = {name: configs[name] for name in SPEC_EXPERIMENTS}
    assert all(c.expert_dim == 1024 and c.name == n for n, c in configs.items())
    assert (
        configs["baseline"].to_dict()
        == ExperimentConfig(name="baseline", expert_dim=1024).to_dict()
    )
    assert (configs["top2"].top_k, configs["top2"].capacity_factor) == (2, 2.5)
    s = configs["strong_reg"]
    assert (s.dropout, s.weight_decay, s.label_smoothing) == (0.2, 1e-3, 0.1)
    assert configs["throughput_opt"].batch_size == 32
    # expert_dim follows the base's dense FFN
    assert (
        get_experiment_configs(base_config("tiny"))["top2"].expert_dim
        == BASE_PRESETS["tiny"]["ffn_dim"]
    )


def test_dense_config_uses_patience_three():
    assert dense_config().early_stopping_patience == 3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", 0),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("aux_weight", -1),
        ("weight_decay", -1e-3),
        ("label_smoothing", -0.1),
        ("capacity_factor", 0),
        ("batch_size", 0),
        ("early_stopping_patience", -1),
        ("gating_temp_schedule", {"start": 0, "end": 0.5, "epochs": 5}),
        ("gating_temp_schedule", {"start": 1.0, "end": -1, "epochs": 5}),
        ("gating_temp_schedule", {"start": 1.0, "end": 0.5, "epochs": 0}),
        ("unknown_field", 1),
    ],
)
def test_bad_experiment_configs_name_the_field(field, value):
    with pytest.raises(ValidationError) as err:
        ExperimentConfig(name="x", expert_dim=64, **{field: value})
    assert field in str(err.value)


def test_bad_base_configs_are_rejected_clearly():
    with pytest.raises(ValidationError, match="divisible by num_heads"):
        BaseConfig(hidden_dim=100, num_heads=8)
    with pytest.raises(ValidationError, match="moe_layers"):
        BaseConfig(num_layers=4, moe_layers=[2, 4])
    with pytest.raises(ValueError, match="unknown base preset"):
        base_config("huge")
    with pytest.raises(ValidationError, match="preset"):  # an override, not the preset's name
        base_config("micro", preset="tiny")


def test_schedule_is_linear_then_held():
    s = GatingTempSchedule(start=1.0, end=0.5, epochs=5)
    assert [round(s.temperature(e), 6) for e in range(8)] == [
        1.0,
        0.9,
        0.8,
        0.7,
        0.6,
        0.5,
        0.5,
        0.5,
    ]


def test_config_and_package_import_no_torch():
    code = (
        "import sys, moe_core, moe_core.config, moe_core.criteria;"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "moe_core.config.ExperimentConfig(name='x', expert_dim=8)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
