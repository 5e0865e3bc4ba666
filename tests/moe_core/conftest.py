from pathlib import Path

import pytest
import torch

from moe_core.config import base_config
from tests.corpus import write_corpus


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("moe-cache")


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
