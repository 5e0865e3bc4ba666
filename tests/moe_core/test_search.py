"""The sweep's space: grid expansion, limits, checks before anything trains, and Optuna's
proposals within the space, reproducible from the seed."""

import math

import pytest
from pydantic import ValidationError

from moe_core.proposals import Proposer
from moe_core.search import MAX_RUNS, SweepConfig, check_sweep, grid_points, why_no_best


def sweep(**fields):
    return SweepConfig(**{"base_preset": "micro", **fields})


def test_a_grid_is_the_product_and_a_conditional_field_appears_only_where_it_applies():
    space = sweep(method="grid", space={
        "top_k": {"choices": [1, 2]},
        "capacity_factor": {"low": 1.0, "high": 2.0, "step": 0.5},
        "aux_free_bias_rate": {"choices": [0.001, 0.01], "when": {"top_k": [2]}},
    }).space  # fmt: skip
    points = grid_points(space)
    assert len(points) == 3 + 3 * 2  # top-1: 3 capacities; top-2: 3 capacities x 2 rates
    assert {"top_k": 1, "capacity_factor": 1.5} in points
    assert all(("aux_free_bias_rate" in p) == (p["top_k"] == 2) for p in points)
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)


def test_a_grid_needs_discrete_values():
    with pytest.raises(ValueError, match="capacity_factor: a grid needs choices"):
        sweep(method="grid", space={"capacity_factor": {"low": 1.0, "high": 2.0}}).budget()


def test_a_sweep_larger_than_the_limit_is_refused_saying_how_many_runs():
    big = sweep(
        method="random", trials=MAX_RUNS, seeds=3, space={"aux_weight": {"low": 0.001, "high": 0.1}}
    )
    (problem,) = check_sweep(big)
    assert f"{MAX_RUNS * 3 + 3} runs" in problem and str(MAX_RUNS) in problem


@pytest.mark.parametrize(("fields", "says"), [
    ({"space": {"hidden_dim": {"choices": [64]}}}, "cannot search ['hidden_dim']"),
    ({"space": {"top_k": {"choices": [1]}}, "method": "tpe"}, "tpe needs a budget"),
    ({"space": {"aux_weight": {"low": 0.1, "high": 0.01}}, "trials": 2}, "must be below high"),
    ({"space": {"aux_weight": {"low": 0, "high": 0.1, "log": True}}, "trials": 2}, "low > 0"),
    ({"space": {"top_k": {"choices": [1]}}, "preset": "nope", "method": "grid"}, "preset: unknown"),
])  # fmt: skip
def test_a_malformed_sweep_is_refused_naming_what_is_wrong(fields, says):
    with pytest.raises(ValidationError, match=None) as caught:
        sweep(**fields)
    assert says in str(caught.value)


def test_every_point_is_checked_against_the_base_before_anything_trains():
    # micro has 8 experts: top-16 cannot route
    problems = check_sweep(sweep(method="grid", space={"top_k": {"choices": [1, 16]}}))
    assert len(problems) == 1 and "top_k=16" in problems[0] and "top_k" in problems[0]
    assert check_sweep(sweep(method="grid", space={"top_k": {"choices": [1, 2]}})) == []


SPACE = {
    "top_k": {"choices": [1, 2]},
    "aux_weight": {"low": 1e-4, "high": 1e-1, "log": True},
    "num_shared_experts": {"low": 0, "high": 2, "integer": True},
    "moe_layers": {"choices": [[2], [2, 4]]},
    "router_z_loss": {"low": 0.0, "high": 0.01, "when": {"top_k": [2]}},
}


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_proposals_stay_in_the_space_and_repeat_with_the_seed(method):
    def proposals(seed):
        proposer = Proposer(sweep(method=method, trials=12, sampler_seed=seed, space=SPACE))
        out = []
        for _ in range(12):
            number, point = proposer.ask()
            out.append(point)
            proposer.tell(number, "complete", point["aux_weight"])  # any objective
        return out

    first = proposals(7)
    assert first == proposals(7)
    assert first != proposals(8)
    for point in first:
        assert point["top_k"] in (1, 2) and point["moe_layers"] in ([2], [2, 4])
        assert 1e-4 <= point["aux_weight"] <= 1e-1
        assert (
            isinstance(point["num_shared_experts"], int) and 0 <= point["num_shared_experts"] <= 2
        )
        assert ("router_z_loss" in point) == (point["top_k"] == 2)
    # log-uniform: small values are as likely as large ones
    assert any(p["aux_weight"] < 1e-2 for p in first)


def test_tpe_moves_towards_what_scored_well():
    proposer = Proposer(sweep(method="tpe", trials=40, sampler_seed=0, prune=False,
                              space={"aux_weight": {"low": 1e-4, "high": 1.0, "log": True}}))  # fmt: skip
    late = []
    for i in range(40):
        number, point = proposer.ask()
        proposer.tell(number, "complete", abs(math.log10(point["aux_weight"]) + 2))  # best at 0.01
        if i >= 30:
            late.append(point["aux_weight"])
    assert sum(1e-3 <= w <= 1e-1 for w in late) >= 7


def test_the_median_pruner_stops_a_trial_worse_than_the_earlier_ones_at_the_same_epoch():
    proposer = Proposer(
        sweep(method="random", trials=3, space={"aux_weight": {"low": 0.001, "high": 0.1}})
    )
    for _ in range(2):
        number, _ = proposer.ask()
        for epoch in (1, 2, 3):
            assert proposer.report(number, 5.0 - epoch / 10, epoch) is False
        proposer.tell(number, "complete", 4.7)
    number, _ = proposer.ask()
    assert proposer.report(number, 6.0, 1) is False  # epoch 1: the warm-up is never pruned
    assert proposer.report(number, 6.0, 2) is True


@pytest.mark.parametrize("margin", [0.0, 0.02])
def test_a_margin_keeps_the_pruner_off_differences_smaller_than_it(margin):
    from moe_core.proposals import Told

    config = sweep(method="random", trials=6, prune_margin=margin,
                   space={"aux_weight": {"low": 0.001, "high": 0.1}})  # fmt: skip
    # three trials done: at epoch 2, 4.800, 4.810 and 4.820 (the median 4.810)
    done = [
        Told(i, {"aux_weight": 0.01}, "complete", 4.5, {1: 5.0, 2: 4.80 + i / 100})
        for i in range(3)
    ]

    def pruned(value: float) -> bool:
        running = Told(3, {"aux_weight": 0.05}, "running", None, {1: 5.0, 2: value})
        return Proposer(config, [*done, running]).prune(3)

    assert pruned(4.805) is False  # better than the median: never
    assert pruned(4.815) is (margin == 0)  # worse by 0.005: only without a margin
    assert pruned(4.835) is True  # worse by 0.025: clearly, with either
    # and through report(), as the engine's sweep asks
    proposer = Proposer(config, done)
    number, _ = proposer.ask()
    assert proposer.report(number, 5.0, 1) is False
    assert proposer.report(number, 4.815, 2) is (margin == 0)


def test_importance_names_the_field_that_moves_the_objective():
    proposer = Proposer(sweep(method="random", trials=30, space={
        "aux_weight": {"low": 0.001, "high": 0.1}, "router_z_loss": {"low": 0.0, "high": 0.01}}))  # fmt: skip
    for _ in range(30):
        number, point = proposer.ask()
        proposer.tell(number, "complete", 10 * point["aux_weight"])
    importance = proposer.importance()
    assert set(importance) == {"aux_weight", "router_z_loss"}
    assert importance["aux_weight"] > 0.8


def test_a_proposer_rebuilt_from_stored_trials_proposes_the_same_next_trial():
    from moe_core.proposals import Told

    config = sweep(method="tpe", trials=10, sampler_seed=3, space=SPACE)
    history = []
    for number in range(6):  # as a service proposes: each from the trials stored so far
        proposer = Proposer(config, history)
        asked, point = proposer.ask()
        assert asked == number
        history.append(Told(number, point, "complete", point["aux_weight"]))
    # the same history, rebuilt again, proposes the same 7th trial; a running trial counts
    assert Proposer(config, history).ask() == Proposer(config, history).ask()
    running = [*history, Told(6, Proposer(config, history).ask()[1], "running")]
    number, point = Proposer(config, running).ask()
    assert number == 7 and point != running[6].params


def test_a_rebuilt_grid_goes_on_from_the_next_point_and_ends():
    from moe_core.proposals import Told

    config = sweep(
        method="grid", space={"top_k": {"choices": [1, 2]}, "aux_weight": {"choices": [0.01, 0.1]}}
    )
    told = [Told(0, {"top_k": 1, "aux_weight": 0.01}, "complete", 1.0)]
    assert Proposer(config, told).ask() == (1, {"top_k": 1, "aux_weight": 0.1})
    told += [Told(i, p, "complete", 1.0) for i, p in enumerate(grid_points(config.space)[1:], 1)]
    assert Proposer(config, told).ask() is None


def test_a_stored_running_trial_is_pruned_against_the_stored_complete_ones():
    from moe_core.proposals import Told

    config = sweep(method="random", trials=5, space={"aux_weight": {"low": 0.001, "high": 0.1}})
    done = [
        Told(i, {"aux_weight": 0.01 * (i + 1)}, "complete", 4.5, {1: 5.0, 2: 4.8}) for i in range(2)
    ]
    good = Proposer(
        config, [*done, Told(2, {"aux_weight": 0.05}, "running", None, {1: 5.0, 2: 4.7})]
    )
    bad = Proposer(
        config, [*done, Told(2, {"aux_weight": 0.05}, "running", None, {1: 5.0, 2: 5.9})]
    )
    assert good.prune(2) is False and bad.prune(2) is True


def _run(steps, tps, val_ce, batch_size=16):
    return {"config": {"batch_size": batch_size},
            "metrics": {"steps": steps, "tokens_per_sec": tps, "val_ce_losses": val_ce,
                        "val_epochs": list(range(1, len(val_ce) + 1)), "best_val_ce_loss": min(val_ce)}}  # fmt: skip


def test_at_equal_time_a_trial_slower_per_token_is_judged_on_what_it_reached_in_the_dense_runs_time():
    from moe_core.search import objective_of

    config = sweep(method="grid", seeds=1, objective="delta_val_ce_at_equal_time",
                   space={"top_k": {"choices": [1]}})  # fmt: skip
    seq = config.base_config().seq_len
    tokens = 10 * 16 * seq  # per epoch
    dense = _run([10, 10, 10], [tokens / 1.0] * 3, [5.0, 4.8, 4.7])  # 1 s an epoch: 3 s in all
    slow = _run([10, 10, 10], [tokens / 1.5] * 3, [4.9, 4.6, 4.5])  # 1.5 s an epoch
    (value,) = objective_of(config, [slow], [dense])["values"]
    assert value == pytest.approx(4.6 - 4.7)  # by 3 s it had finished 2 epochs
    plain = sweep(method="grid", seeds=1, space={"top_k": {"choices": [1]}})
    assert objective_of(plain, [slow], [dense])["values"] == [pytest.approx(4.5 - 4.7)]


def test_why_no_best_names_what_kept_each_trial_out():
    def trial(number: int, state: str, mean: float | None = None) -> dict:
        return {"number": number, "state": state, "objective": {"mean": mean}}

    assert why_no_best([trial(0, "complete", -0.1), trial(1, "tertiary_failed", -0.3)]) is None
    assert (
        why_no_best([trial(0, "running"), trial(1, "running")]) == "no best trial yet: both running"
    )
    collapsed = [trial(n, "tertiary_failed", -0.1 * n) for n in range(3)]
    assert why_no_best(collapsed, 0.42) == (
        "no best trial, none passed: all 3 failed tertiary (a router collapsed: every expert "
        "must get ≥ 5% of assignments; the least used got 0.4%)"
    )
    assert why_no_best([trial(0, "pruned"), trial(1, "failed"), trial(2, "running")]) == (
        "no best trial yet: 1 pruned, 1 failed, 1 running"
    )
