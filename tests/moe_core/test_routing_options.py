"""The routing options of docs/routing-options.md: each does what it says, is off by
default, and resumes exactly from a checkpoint."""

import pytest
import torch
from torch.utils.data import DataLoader

from moe_core.checkpoint import Checkpointing
from moe_core.config import (
    EXPERIMENT_PRESETS,
    ExperimentConfig,
    MoEConfig,
    base_config,
    get_experiment_configs,
)
from moe_core.errors import TrainingCancelled
from moe_core.hooks import TrainerHooks
from moe_core.model import GPT, GPTConfig, MoELayer
from moe_core.runner import build_model, build_optimizer
from moe_core.sizing import parameters
from moe_core.trainer import Trainer
from tests.moe_core.test_sizing import active_on_the_modules
from tests.moe_core.test_trainer import StopAt, random_blocks

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny steps, one thread


OPTIONS = {
    "dropless": dict(dropless=True),
    "zloss": dict(router_z_loss=1e-2),
    "jitter": dict(router_jitter=0.1),
    "shared": dict(num_shared_experts=1),
    "aux_free": dict(aux_free_bias_rate=1e-2),
    "fine_grained": dict(num_experts=8, top_k=2, expert_dim=16),
}


def skewed_layer(**kw) -> MoELayer:
    """4 experts on 4-d input; the router sends a token to the expert of its largest
    coordinate, so inputs choose the routing."""
    layer = MoELayer(4, MoEConfig(num_experts=4, expert_dim=8, **kw))
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(4) * 5.0)
    return layer.train()


def skewed_input(n: int = 16, hot: int = 10) -> torch.Tensor:
    """`hot` of `n` tokens prefer expert 0, the rest spread over experts 1-3."""
    rows = [[1.0, 0, 0, 0]] * hot + [torch.eye(4)[1 + i % 3].tolist() for i in range(n - hot)]
    return torch.tensor(rows).view(1, n, 4)


# ---------------------------------------------------------------------------- dropless


def test_dropless_drops_nothing_where_capacity_drops():
    x = skewed_input()  # expert 0 gets 10 of 16 tokens: capacity 1.0 holds 4
    capped, dropless = skewed_layer(capacity_factor=1.0), skewed_layer(dropless=True)
    dropless.load_state_dict(capped.state_dict())
    _, stats = capped(x)
    assert stats.dropped.item() == 6 and stats.pad_ratio.item() > 0
    out, stats = dropless(x)
    assert stats.dropped.item() == 0 and stats.pad_ratio.item() == 0
    assert stats.counts.tolist() == [10, 2, 2, 2]
    assert (out.view(16, 4).abs().sum(dim=1) > 0).all()  # every token got its expert's output


def test_dropless_matches_a_capacity_run_where_nothing_overflows():
    torch.manual_seed(0)
    capped = MoELayer(
        16, MoEConfig(num_experts=4, expert_dim=32, top_k=2, capacity_factor=3.0)
    ).train()
    dropless = MoELayer(16, MoEConfig(num_experts=4, expert_dim=32, top_k=2, dropless=True)).train()
    dropless.load_state_dict(capped.state_dict())
    x = torch.randn(2, 24, 16)
    assert capped.capacity(48) < 48  # a real capacity, just large enough
    outs, dropped = [], []
    for layer in (capped, dropless):
        xi = x.clone().requires_grad_()
        out, stats = layer(xi)
        (out.square().sum() + stats.balance_loss).backward()
        outs.append((out, stats.balance_loss, xi.grad, layer.router.weight.grad,
                     layer.experts.w1.grad))  # fmt: skip
        dropped.append(stats.dropped.item())
    assert dropped == [0, 0]  # nothing overflowed
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- z-loss


def tiny_gpt(moe_layers=(1,), **moe) -> GPT:
    config = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, ffn_dim=32,
                  dropout=0.0, moe_layers=moe_layers)  # fmt: skip
    return GPT(GPTConfig(**config, moe=MoEConfig(num_experts=4, expert_dim=32, **moe)))


def patterned_batches(steps: int, seed: int = 0):
    """Learnable sequences (token t + 1 follows t, mod 64) from random starts."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        seq = (torch.randint(0, 64, (8, 1), generator=g) + torch.arange(17)) % 64
        yield seq[:, :-1], seq[:, 1:]


def mean_router_z(z_coef: float, steps: int = 300) -> float:
    torch.manual_seed(0)
    model = tiny_gpt(router_z_loss=z_coef).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seen = []
    for i, (x, y) in enumerate(patterned_batches(steps)):
        logits, aux, routing = model(x, output_routing=True)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, 64), y.reshape(-1)) + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= steps - 50:
            seen.append(routing[0].z_loss.item())
    return sum(seen) / len(seen)


def test_z_loss_lowers_the_mean_squared_router_log_sum_exp():
    without, with_z = mean_router_z(0.0), mean_router_z(1e-2)
    assert with_z < 0.5 * without, (with_z, without)


def test_z_loss_joins_the_aux_loss_with_its_weight():
    torch.manual_seed(0)
    plain = tiny_gpt(moe_layers=(0, 1))
    weighted = tiny_gpt(moe_layers=(0, 1), router_z_loss=1e-3)
    weighted.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 64, (2, 16))
    _, aux = plain(idx)
    _, aux_z, routing = weighted(idx, output_routing=True)
    z = torch.stack([s.z_loss for s in routing]).mean()
    assert z.item() > 0
    torch.testing.assert_close(aux_z, aux + 1e-3 * z)


# ---------------------------------------------------------------------------- jitter


def test_jitter_changes_routing_in_training_only():
    torch.manual_seed(0)
    plain, jittered = tiny_gpt(), tiny_gpt(router_jitter=0.5)
    jittered.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 64, (4, 16))
    plain.eval(), jittered.eval()
    with torch.no_grad():
        reference = plain(idx)[0]
        assert torch.equal(jittered(idx)[0], reference)
        assert torch.equal(jittered(idx)[0], reference)  # deterministic
        jittered.train()
        router = jittered.moe_layers[0].router
        x = torch.randn(32, 16)
        assert not torch.equal(router(x), router(x))  # noisy while training


# ---------------------------------------------------------------------------- shared experts


def test_a_shared_expert_sees_every_token_dropped_ones_too():
    layer = skewed_layer(capacity_factor=1.0, num_shared_experts=1)
    seen = []
    layer.shared.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].shape[0]))
    x = skewed_input()
    out, stats = layer(x)
    assert seen == [16]
    assert stats.dropped.item() == 6
    # a dropped token (the last 6 of expert 0's, in token order) gets the shared expert alone
    with torch.no_grad():
        shared = layer.shared(x.view(16, 4))
    torch.testing.assert_close(out.view(16, 4)[4:10], shared[4:10])
    assert not torch.allclose(out.view(16, 4)[:4], shared[:4])


def test_shared_experts_count_as_active_parameters():
    base = base_config("micro")
    plain = build_model(ExperimentConfig(name="p", expert_dim=64), base)
    shared = build_model(ExperimentConfig(name="s", expert_dim=64, num_shared_experts=2), base)
    extra = len(base.moe_layers) * 2 * (2 * base.hidden_dim * 64)
    assert active_on_the_modules(shared) - active_on_the_modules(plain) == extra


# ---------------------------------------------------------------------------- fine-grained


def test_fine_grained_experts_keep_the_active_parameter_count():
    base = base_config("spec")
    configs = get_experiment_configs(base)
    fine, coarse = configs["fine_grained"], configs["baseline"]
    assert (fine.experts(base), fine.expert_dim, fine.top_k) == (32, 256, 4)
    fine_model, coarse_model = build_model(fine, base), build_model(coarse, base)
    layer = fine_model.moe_layers[0]
    assert (layer.num_experts, layer.top_k, layer.experts.w1.shape[-1]) == (32, 4, 256)
    # the same expert parameters per token and in all; only the router grows (32 x C, not 8 x C)
    router = len(base.moe_layers) * (32 - 8) * base.hidden_dim
    assert active_on_the_modules(fine_model) - active_on_the_modules(coarse_model) == router
    assert parameters(fine, base, dense=False)[1] == active_on_the_modules(fine_model)
    experts = lambda m: sum(layer.experts.w1.numel() for layer in m.moe_layers)  # noqa: E731
    assert experts(fine_model) == experts(coarse_model)


def test_num_experts_is_validated_against_top_k():
    with pytest.raises(ValueError, match="exceeds num_experts"):
        ExperimentConfig(name="x", expert_dim=8, num_experts=2, top_k=4)


# ---------------------------------------------------------------------------- aux-free bias


def per_step_max_load(rate: float, steps: int = 300) -> list[float]:
    """A frozen router that favours expert 0 (its logit is higher on average input),
    balanced only by the bias."""
    torch.manual_seed(0)
    layer = MoELayer(16, MoEConfig(num_experts=4, expert_dim=8, aux_free_bias_rate=rate)).train()
    with torch.no_grad():
        layer.router.weight.normal_(std=0.1)
    g = torch.Generator().manual_seed(1)
    shift = torch.zeros(16)
    shift[:] = 0.3 * layer.router.weight[0].sign()  # inputs lean toward expert 0
    loads = []
    for _ in range(steps):
        with torch.no_grad():
            _, stats = layer(torch.randn(1, 256, 16, generator=g) + shift)
        counts = stats.counts
        loads.append((counts.max() / counts.sum()).item())
        layer.update_expert_bias(counts)  # as the Trainer does after each optimizer step
    return loads


def test_the_aux_free_bias_reduces_the_per_step_max_load_of_an_imbalanced_router():
    without = per_step_max_load(0.0)
    with_bias = per_step_max_load(1e-3)  # DeepSeek-V3's rate
    mean = lambda loads: sum(loads) / len(loads)  # noqa: E731
    # deliberately imbalanced: expert 0 takes most of every step, and keeps it without the bias
    assert mean(without[:50]) > 0.55 and mean(without[-50:]) > 0.55
    assert mean(with_bias[:10]) > 0.55  # the bias starts at zero
    assert mean(with_bias[-50:]) < 0.35, mean(with_bias[-50:])  # 0.25 is perfect balance


def test_the_bias_chooses_experts_but_does_not_gate_them():
    layer = skewed_layer(dropless=True, aux_free_bias_rate=1e-3)
    x = torch.eye(4)[[0, 0, 1, 2]].view(1, 4, 4) + 0.1
    with torch.no_grad():
        layer.expert_bias.copy_(torch.tensor([-2.0, 0, 0, 3.0]))  # expert 3 wins every token
        probs = torch.softmax(layer.router(x.view(4, 4)), dim=-1)
        out, stats = layer(x)
    assert stats.counts.tolist() == [0, 0, 0, 4]
    expected = probs[:, 3:4] * (torch.nn.functional.gelu(x.view(4, 4) @ layer.experts.w1[3])
                                @ layer.experts.w2[3])  # fmt: skip
    torch.testing.assert_close(out.view(4, 4), expected)


# ---------------------------------------------------------------------------- the Trainer


def option_trainer(options: dict, **kw) -> Trainer:
    torch.manual_seed(0)
    base = base_config("micro", seq_len=16, learning_rate=1e-3)
    config = ExperimentConfig(**{"name": "t", "expert_dim": 64, "batch_size": 8,
                                 "dropout": 0.1, **options})  # fmt: skip
    model = build_model(config, base)
    train = DataLoader(random_blocks(32), batch_size=8, shuffle=True)
    val = DataLoader(random_blocks(8, seed=1), batch_size=8)
    return Trainer(model, train, val, build_optimizer(model, config, base), "cpu", "t",
                   verbose=False, **kw)  # fmt: skip


ROUTING_KEYS = {"imbalance", "max_imbalance", "pad_ratio", "z_loss"}


def test_every_epoch_records_the_imbalance_metrics():
    seen = []
    option_trainer({}, hooks=TrainerHooks(on_epoch_end=seen.append)).train(2)
    for record in seen:
        for s in record["expert_stats"]:
            assert ROUTING_KEYS <= set(s)
            assert 0 <= s["imbalance"] <= s["max_imbalance"] <= len(s["usage"]) - 1
            # the worst step's imbalance is the busiest single step's load over the mean
            assert s["max_imbalance"] == pytest.approx(
                len(s["usage"]) * s["max_step_load"] / 100 - 1, rel=1e-5
            )
            assert 0 <= s["pad_ratio"] < 1 and s["z_loss"] > 0
        for s in record["eval_expert_stats"]:
            assert s["imbalance"] == pytest.approx(len(s["usage"]) * s["max_usage"] / 100 - 1)


def test_dropless_training_records_no_drops_and_no_padding():
    seen = []
    option_trainer(OPTIONS["dropless"], hooks=TrainerHooks(on_epoch_end=seen.append)).train(1)
    for s in seen[0]["expert_stats"]:
        assert s["dropped"] == 0 and s["pad_ratio"] == 0


def test_the_trainer_moves_the_bias_and_the_checkpoint_holds_it(tmp_path):
    trainer = option_trainer(OPTIONS["aux_free"], checkpointing=Checkpointing(tmp_path / "c.pt"))
    trainer.train(1)
    bias = trainer.moe_layers[0].expert_bias
    assert bias.abs().sum() > 0  # 4 steps at 1e-2 each: every expert has moved
    assert torch.allclose(bias.abs(), torch.full_like(bias, 1e-2), atol=1e-2 * 4)
    saved = torch.load(tmp_path / "c.pt", weights_only=False)["model"]
    assert torch.equal(saved["blocks.2.ffn.expert_bias"], bias)


def exact(trainer: Trainer):
    m = trainer.get_metrics()
    keys = ("train_losses", "train_aux_losses", "val_losses", "val_aux_losses", "current_step")
    stats = [h["layers"] for h in m["expert_stats_history"] + m["eval_expert_stats_history"]]
    return {k: m[k] for k in keys}, stats


@pytest.mark.parametrize("option", list(OPTIONS))
def test_a_run_with_each_option_resumes_exactly(tmp_path, option):
    """Stopped mid-epoch 2 (check 7: 4 steps, 1 check after them and 1 evaluation batch
    per epoch) and resumed in a fresh trainer: the same losses, statistics and weights
    (the aux-free bias among them) as an uninterrupted run."""
    full = option_trainer(OPTIONS[option])
    full.train(3)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(TrainingCancelled):
        option_trainer(OPTIONS[option], hooks=TrainerHooks(should_stop=StopAt(8)),
                       checkpointing=Checkpointing(checkpoint)).train(3)  # fmt: skip
    resumed = option_trainer(OPTIONS[option], checkpointing=Checkpointing(checkpoint))
    torch.manual_seed(987)
    resumed.load_checkpoint(checkpoint)
    resumed.train(3)
    assert exact(resumed) == exact(full)
    state = resumed.model.state_dict()
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(state[name], tensor), name
    if option == "aux_free":
        assert any("expert_bias" in name for name in state)


# ---------------------------------------------------------------------------- presets


def test_presets_are_the_baseline_plus_one_option():
    configs = get_experiment_configs(base_config("tiny"))
    baseline = configs["baseline"].to_dict()
    expected = {
        "zloss": {"router_z_loss"},
        "aux_free": {"aux_free_bias_rate", "aux_weight"},
        "shared_expert": {"num_shared_experts"},
        "dropless": {"dropless"},
        "jitter": {"router_jitter"},
        "fine_grained": {"num_experts", "expert_dim", "top_k", "capacity_factor"},
    }
    assert set(expected) <= set(EXPERIMENT_PRESETS)
    for name, fields in expected.items():
        config = configs[name].to_dict()
        changed = {k for k in config if k != "name" and config[k] != baseline[k]}
        assert changed == fields, name


def test_the_options_are_off_by_default():
    layer = build_model(ExperimentConfig(name="x", expert_dim=8), base_config("micro")).moe_layers[
        0
    ]
    assert not layer.config.dropless and layer.router.jitter == 0 and layer.shared is None
    assert layer.expert_bias is None and "expert_bias" not in dict(layer.named_buffers())
