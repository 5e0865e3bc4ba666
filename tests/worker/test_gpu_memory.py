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
