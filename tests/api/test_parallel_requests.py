"""A run on several GPUs, as a request: its layout is checked before anything is queued
(each refusal names its field), and the dry run sizes one GPU's share."""

from __future__ import annotations

import pytest

from tests.client import make_client
from tests.factories import fast_base

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)


@pytest.fixture(scope="module")
def api(deployment):
    with make_client(deployment(max_gpus_per_run=4)) as client:
        yield client


def body(config=None, **base):
    return {"name": "ranks", "base_preset": "micro", "preset": "top2",
            "base": fast_base(**base), "config": config or {}}  # fmt: skip


@pytest.mark.parametrize(
    ("base", "config", "rule", "loc"),
    [
        ({"gpus": 2, "expert_parallel": 3}, {}, "expert_parallel_layout", "expert_parallel"),
        ({"gpus": 4, "expert_parallel": 4}, {"num_experts": 6}, "experts_over_ranks",
         "expert_parallel"),
        ({"gpus": 3}, {}, "batch_over_ranks", "gpus"),
        ({"gpus": 8}, {}, "gpus_over_deployment", "gpus"),
        ({"gpus": 0}, {}, "greater_than_equal", "gpus"),
        ({"gpus": 65}, {}, "less_than_equal", "gpus"),
        ({"gpus": "2"}, {}, "int_type", "gpus"),
    ],
)  # fmt: skip
def test_a_layout_that_does_not_fit_is_a_422_naming_its_field(api, base, config, rule, loc):
    before = api.get("/experiments").json()["total"]
    for dry_run in ("true", "false"):
        response = api.post(f"/experiments?dry_run={dry_run}", json=body(config, **base))
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert (error["type"], error["loc"]) == (rule, ["body", "base", loc])
    assert api.get("/experiments").json()["total"] == before  # nothing stored


def test_the_dry_run_sizes_one_gpus_share(api):
    def plan(**base):
        response = api.post("/experiments?dry_run=true", json=body(**base))
        assert response.status_code == 200, response.text
        return response.json()

    one, four = plan(), plan(gpus=4, expert_parallel=2)
    assert four["base"]["gpus"] == 4 and four["base"]["expert_parallel"] == 2
    assert four["params"] == one["params"]  # the model is the model, however it is split
    # each GPU holds the dense parameters and half the experts: less than the whole model
    assert four["gpu_memory"]["parameters"] < one["gpu_memory"]["parameters"]
    # and a quarter of each batch
    assert four["gpu_memory"]["activations"] < one["gpu_memory"]["activations"]
    assert four["steps_per_epoch"] == one["steps_per_epoch"]  # the global batch is the same
