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
