import math

import pytest
import torch
import torch.nn.functional as F

from moe_core.config import MoEConfig
from moe_core.model import GPT, MLP, GPTConfig, MoELayer


def small_config(**kw) -> GPTConfig:
    moe = MoEConfig(num_experts=4, expert_dim=32, **kw.pop("moe", {}))
    defaults = dict(vocab_size=97, block_size=16, n_layer=4, n_head=2, n_embd=16, ffn_dim=32,
                    dropout=0.0, moe=moe)  # fmt: skip
    return GPTConfig(**{**defaults, **kw})


def expert_ffn(layer: MoELayer, e: int, x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x @ layer.experts.w1[e]) @ layer.experts.w2[e]


def routed_layer(num_experts: int, top_k: int, capacity_factor: float) -> MoELayer:
    """A layer whose router sends a token to expert i when its i-th coordinate is largest."""
    layer = MoELayer(num_experts, MoEConfig(num_experts=num_experts, expert_dim=8, top_k=top_k,
                     capacity_factor=capacity_factor))  # fmt: skip
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(num_experts) * 5.0)
    return layer.eval()


@pytest.mark.parametrize("moe_layers", [(), (1, 3)])
def test_forward_shapes_dense_and_moe(moe_layers):
    model = GPT(small_config(moe_layers=moe_layers))
    idx = torch.randint(0, 97, (3, 16))
    logits, aux = model(idx)
    assert logits.shape == (3, 16, 97)
    assert aux.shape == ()
    assert len(model.moe_layers) == len(moe_layers)
    if not moe_layers:
        assert aux.item() == 0.0
    logits.mean().backward()  # every parameter is reachable
    assert all(p.grad is not None for p in model.parameters())


def test_moe_has_more_parameters_at_equal_active_width():
    dense = GPT(small_config())
    moe = GPT(small_config(moe_layers=(1, 3)))
    per_layer = 4 * (16 * 32 * 2) + 4 * 16 - (16 * 32 * 2)  # 4 experts + router - one MLP
    assert (
        sum(p.numel() for p in moe.parameters()) - sum(p.numel() for p in dense.parameters())
        == 2 * per_layer
    )


def test_aux_loss_is_weight_at_perfect_balance_and_grows_when_collapsed():
    model = GPT(small_config(moe_layers=(1, 3), moe={"aux_weight": 0.01}))
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        for layer in model.moe_layers:
            layer.router.weight.zero_()  # uniform probabilities: P_e = 1/E
    _, aux = model(idx)
    assert aux.item() == pytest.approx(0.01, rel=1e-6)

    # Hand-built balance: 8 tokens, 4 experts, 2 tokens each, confident router.
    layer = routed_layer(4, 1, 1.0)
    x = torch.eye(4).repeat(2, 1).view(1, 8, 4)
    _, stats = layer(x)
    assert stats.balance_loss.item() == pytest.approx(1.0, abs=1e-6)

    # Collapse: everything to expert 0 -> f = (1,0,0,0), P_0 ~ 1 -> loss ~ E.
    x = torch.tensor([1.0, 0, 0, 0]).repeat(8, 1).view(1, 8, 4) * 3
    _, collapsed = layer(x)
    assert collapsed.balance_loss.item() > 3.9
    assert collapsed.counts.tolist() == [8, 0, 0, 0]


def test_capacity_drops_exactly_the_tokens_over_capacity():
    layer = routed_layer(2, 1, capacity_factor=1.0).train()  # capacity = ceil(1.0 * 8 / 2) = 4
    # tokens 0..5 prefer expert 0, tokens 6..7 expert 1
    x = torch.tensor([[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 2).view(1, 8, 2)
    assert layer.capacity(8) == 4
    out, stats = layer(x)
    out = out.view(8, 2)
    assert stats.counts.tolist() == [6, 2]
    assert stats.dropped.item() == 2
    # First four tokens of expert 0 are processed; tokens 4 and 5 are dropped (zeros:
    # the block's residual carries them); expert 1's two tokens fit.
    assert torch.all(out[4:6] == 0)
    probs = torch.softmax(layer.router(x.view(8, 2)), -1)
    for t, e in [(0, 0), (1, 0), (2, 0), (3, 0), (6, 1), (7, 1)]:
        expected = probs[t, e] * expert_ffn(layer, e, x.view(8, 2)[t])
        torch.testing.assert_close(out[t], expected)


def test_evaluation_drops_nothing_but_counts_what_training_capacity_would_drop():
    x = torch.tensor([[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 2).view(1, 8, 2)  # 6 and 2, capacity 4
    layer = routed_layer(2, 1, capacity_factor=1.0)  # eval mode
    out, stats = layer(x)
    assert stats.dropped.item() == 0 and stats.over_capacity.item() == 2
    assert torch.all(out.view(8, 2)[4:6] != 0)  # tokens 4 and 5 reach their expert
    layer.train()
    trained, stats = layer(x)
    assert stats.dropped.item() == stats.over_capacity.item() == 2
    # a separate evaluation capacity, when set, is applied in eval mode
    layer.config = layer.config.model_copy(update={"eval_capacity_factor": 1.0})
    layer.eval()
    capped, stats = layer(x)
    assert stats.dropped.item() == 2
    torch.testing.assert_close(capped, trained)


def test_balance_loss_over_many_batches_is_the_loss_of_all_their_tokens():
    layer = MoELayer(8, MoEConfig(num_experts=4, expert_dim=8, top_k=2)).eval()
    x = torch.randn(4, 8, 8)
    _, whole = layer(x)
    counts, prob_sum = torch.zeros(4, dtype=torch.long), torch.zeros(4)
    for part in x.split(1):
        _, per_batch = layer(part)
        counts += per_batch.counts
        prob_sum += per_batch.prob_sum
    torch.testing.assert_close(layer.balance_loss(counts, prob_sum), whole.balance_loss)


def test_top2_combines_two_experts_with_renormalised_gates():
    layer = routed_layer(3, 2, capacity_factor=10.0)  # no drops
    x = torch.tensor([[2.0, 1.0, -1.0], [-1.0, 0.5, 1.0]]).view(1, 2, 3)
    out, stats = layer(x)
    probs = torch.softmax(layer.router(x.view(2, 3)), -1)
    for t, (a, b) in enumerate([(0, 1), (2, 1)]):
        ga, gb = (
            probs[t, a] / (probs[t, a] + probs[t, b]),
            probs[t, b] / (probs[t, a] + probs[t, b]),
        )
        xt = x.view(2, 3)[t]
        expected = ga * expert_ffn(layer, a, xt) + gb * expert_ffn(layer, b, xt)
        torch.testing.assert_close(out.view(2, 3)[t], expected)
    assert stats.counts.sum().item() == 4  # two assignments per token


def test_top2_drops_second_choices_before_first_choices():
    layer = routed_layer(2, 2, capacity_factor=1.0).train()  # capacity 2 per expert, 4 tokens
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]).view(1, 4, 2)
    out, stats = layer(x)
    assert stats.dropped.item() == 4  # every second choice, no first choice
    probs = torch.softmax(layer.router(x.view(4, 2)), -1)
    firsts = probs.max(-1)
    for t in range(4):
        e = firsts.indices[t].item()
        gate = firsts.values[t] / probs[t].sum()  # renormalised over the two choices
        torch.testing.assert_close(out.view(4, 2)[t], gate * expert_ffn(layer, e, x.view(4, 2)[t]))


def test_one_expert_top1_equals_a_dense_ffn_with_the_same_weights():
    mlp = MLP(16, 32, dropout=0.0)
    layer = MoELayer(16, MoEConfig(num_experts=1, expert_dim=32, top_k=1, capacity_factor=1.0))
    with torch.no_grad():
        layer.experts.w1[0].copy_(mlp.fc.weight.t())
        layer.experts.w2[0].copy_(mlp.proj.weight.t())
    x = torch.randn(3, 5, 16)
    out, stats = layer(x)
    torch.testing.assert_close(out, mlp(x))
    assert stats.balance_loss.item() == pytest.approx(1.0)


def test_temperature_sharpens_routing():
    layer = routed_layer(4, 1, 10.0)
    x = torch.randn(1, 32, 4)
    p1 = torch.softmax(layer.router(x.view(32, 4)), -1)
    layer.router.set_temperature(0.5)
    p2 = torch.softmax(layer.router(x.view(32, 4)), -1)
    entropy = lambda p: -(p * p.log()).sum(-1).mean()  # noqa: E731
    assert entropy(p2) < entropy(p1)
    torch.testing.assert_close(
        layer.router(x.view(32, 4)) * 0.5, x.view(32, 4) @ layer.router.weight.t()
    )


def test_router_gets_gradient_from_the_task_loss_under_top1():
    layer = MoELayer(8, MoEConfig(num_experts=4, expert_dim=16, top_k=1, capacity_factor=2.0))
    out, _ = layer(torch.randn(2, 8, 8))
    out.pow(2).mean().backward()
    assert layer.router.weight.grad.abs().sum() > 0


def test_top_k_larger_than_experts_is_rejected():
    with pytest.raises(ValueError, match="top_k"):
        MoELayer(8, MoEConfig(num_experts=2, expert_dim=8, top_k=3))


def test_capacity_is_the_switch_formula():
    layer = MoELayer(8, MoEConfig(num_experts=8, expert_dim=8, capacity_factor=1.25))
    assert layer.capacity(4096) == math.ceil(1.25 * 4096 / 8)


def test_slice_loop_fallback_matches_grouped_mm(monkeypatch):
    import moe_core.model as model_mod

    layer = MoELayer(16, MoEConfig(num_experts=4, expert_dim=32, top_k=2, capacity_factor=1.0))
    x = torch.randn(2, 12, 16, requires_grad=True)
    out, _ = layer(x)
    (grad_x,) = torch.autograd.grad(out.pow(2).sum(), x)
    monkeypatch.setattr(model_mod, "_grouped_mm_supported", lambda *a: False)  # e.g. fp32 on CUDA
    out2, _ = layer(x)
    (grad_x2,) = torch.autograd.grad(out2.pow(2).sum(), x)
    torch.testing.assert_close(out2, out)
    torch.testing.assert_close(grad_x2, grad_x)
