# corpus_dir and cache_dir (a generated corpus and a session cache) come from tests/fixtures/data.py.
import pytest
import torch

from moe_core.config import base_config


@pytest.fixture
def micro_base(corpus_dir, cache_dir):
    return base_config("micro", data_dir=str(corpus_dir), cache_dir=str(cache_dir))


@pytest.fixture(scope="session")
def micro_data(corpus_dir, cache_dir):
    from moe_core.data import build_datasets

    return build_datasets(base_config("micro", data_dir=str(corpus_dir), cache_dir=str(cache_dir)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    # Many tiny steps: with a thread per core they spend their time in OpenMP barriers
    # whenever another process holds a core (10-25x slower here under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
