"""The GPU path, held on the CPU: a training step whose shapes do not depend on the routing
(one graph, no data-dependent op, so no host sync), compiled once for training and once for
evaluation however many steps and epochs run, in the precision the run asks for."""

import functools

import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.utils import counters

from moe_core.config import (
    EXPERIMENT_PRESETS,
    GatingTempSchedule,
    base_config,
    dense_config,
    get_experiment_configs,
)
from moe_core.runner import (
    batches,
    build_model,
    build_optimizer,
    resolve_precision,
    run_single_experiment,
)
from moe_core.trainer import Trainer


@pytest.mark.parametrize("preset", ["dense", *EXPERIMENT_PRESETS])
def test_the_training_forward_of_every_preset_is_one_graph(preset):
    """torch._dynamo.explain breaks a graph at every op whose output shape depends on the
    data (bincount, nonzero, boolean indexing) and at every host read (.item(), .tolist()):
    none is left in a training forward, so it runs without a device sync (before: 7 breaks
    in each MoE preset). bf16 autocast: grouped_mm's compiled form takes bf16 only."""
    base = base_config("micro")
    config = dense_config(base) if preset == "dense" else get_experiment_configs(base)[preset]
    model = build_model(config, base, dense=preset == "dense").train()
    x = torch.randint(0, base.vocab_size, (config.batch_size, base.seq_len))
    dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explanation = dynamo.explain(model)(x, output_routing=True)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.fixture
def fast_compile(monkeypatch):
    """torch.compile as the Trainer calls it, on aot_eager: the same tracing (dynamo and
    autograd's graphs, guards, recompilations) without inductor's minutes of codegen."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    dynamo.reset()
    counters.clear()
    yield
    dynamo.reset()


def test_a_compiled_run_compiles_one_training_and_one_evaluation_graph(
    micro_data, micro_base, fast_compile
):
    # three epochs of a temperature schedule (a new temperature each epoch), an evaluation
    # set that ends in a short batch, and the test split after training
    base = micro_base.model_copy(
        update={"num_epochs": 3, "compile": "default", "precision": "bf16"}
    )
    config = get_experiment_configs(base)["top2"].model_copy(
        update={"gating_temp_schedule": GatingTempSchedule(start=2.0, end=0.5, epochs=2)}
    )
    assert len(micro_data.val) % config.batch_size != 0  # a short last batch, run eagerly
    result = run_single_experiment(config, micro_data.train, micro_data.val, base, "cpu",
                                   test_dataset=micro_data.test, verbose=False)  # fmt: skip
    assert result["compile"] == "default" and result["precision"] == "bf16"
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 2  # training and evaluation, nothing more
    losses = result["metrics"]["val_ce_losses"]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_precision_auto_is_float32_on_the_cpu_and_bf16_when_asked():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_bf16_trains_in_bf16_and_keeps_the_router_and_losses_in_float32(micro_data, micro_base):
    base = micro_base.model_copy(update={"num_epochs": 1, "precision": "bf16"})
    config = get_experiment_configs(base)["baseline"]
    seen = {}
    model = build_model(config, base)

    def remember(key):
        def hook(_module, _inputs, out):
            seen.setdefault(key, out.dtype)

        return hook

    model.moe_layers[0].router.register_forward_hook(remember("router"))
    model.blocks[0].attn.qkv.register_forward_hook(remember("matmul"))
    trainer = Trainer(model, batches(micro_data.train, 16, torch.device("cpu"), train=True),
                      batches(micro_data.val, 16, torch.device("cpu")),
                      build_optimizer(model, config, base), "cpu", verbose=False,
                      amp_dtype=torch.bfloat16)  # fmt: skip
    x, y = next(iter(trainer.train_loader))
    loss, ce, aux, _ = trainer.loss_step.eager(x, y, 0.0)
    assert seen == {"router": torch.float32, "matmul": torch.bfloat16}
    assert loss.dtype == ce.dtype == aux.dtype == torch.float32
    result = run_single_experiment(config, micro_data.train, micro_data.val, base, "cpu",
                                   verbose=False)  # fmt: skip
    fp32 = run_single_experiment(config, micro_data.train, micro_data.val,
                                 base.model_copy(update={"precision": "fp32"}), "cpu",
                                 verbose=False)  # fmt: skip
    assert (result["precision"], fp32["precision"]) == ("bf16", "fp32")
    a, b = result["metrics"]["val_ce_losses"][0], fp32["metrics"]["val_ce_losses"][0]
    assert a != b and a == pytest.approx(b, abs=0.05)  # another precision, the same model
