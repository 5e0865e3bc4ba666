"""How a run shares its GPU: its memory share, a run too large for the GPU refused at once,
and the wait before a run that ran out of memory is offered again."""

import pytest

from moe_core.config import base_config, get_experiment_configs
from moe_core.sizing import GiB, memory_estimate
from worker.gpu_memory import GPUTooSmall, memory_fraction, retry_delay


def test_a_run_that_fits_its_slot_gets_its_slots_share_and_a_larger_one_the_whole_gpu():
    assert memory_fraction(estimate=10 * GiB, total=140 * GiB, slots=4) == 0.25
    assert memory_fraction(estimate=40 * GiB, total=140 * GiB, slots=4) == 1.0
    assert memory_fraction(estimate=40 * GiB, total=140 * GiB, slots=1) == 1.0


def test_a_run_larger_than_the_gpu_is_refused_with_both_sizes():
    base = base_config("spec", hidden_dim=4096, num_heads=32, ffn_dim=16384, seq_len=4096)
    config = get_experiment_configs(base)["baseline"].model_copy(update={"batch_size": 64})
    estimate = memory_estimate(config, base, dense=False)["total"]
    with pytest.raises(GPUTooSmall) as refused:
        memory_fraction(estimate=estimate, total=140 * GiB, slots=1)
    message = str(refused.value)
    assert f"{estimate / GiB:.1f} GiB" in message and "140.0 GiB" in message
    assert "batch_size" in message


def test_the_wait_doubles_from_ten_seconds_to_five_minutes():
    assert [retry_delay(n) for n in range(7)] == [10, 20, 40, 80, 160, 300, 300]


def _torch_checks_the_index(calls):
    """torch.cuda.set_per_process_memory_fraction as torch checks its device (it raised
    for a bare torch.device("cuda") on the H200), recording what it was given."""
    from torch.cuda._utils import _get_device_index

    def set_fraction(fraction, device=None):
        calls.append((fraction, _get_device_index(device)))

    return set_fraction


@pytest.mark.parametrize(("device", "index"), [("cuda", 3), ("cuda:1", 1)])
def test_a_runs_memory_share_is_set_on_its_gpus_index(monkeypatch, device, index):
    import torch

    from store.settings import Settings
    from worker.gpu_memory import share_the_gpu

    calls = []
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", _torch_checks_the_index(calls)
    )
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    props = type("Props", (), {"total_memory": 141 * GiB})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: props)
    base = base_config("spec")
    share_the_gpu(get_experiment_configs(base)["baseline"], base, dense=False,
                   device=torch.device(device), settings=Settings(runs_per_gpu=4))  # fmt: skip
    assert calls == [(0.25, index)]
