import os
from pathlib import Path

import pytest
import torch

import moe_core.data as data_mod
from moe_core.config import base_config
from moe_core.data import TokenBlocks, build_datasets
from tests.corpus import write_corpus


def test_blocks_are_contiguous_and_non_overlapping():
    tokens = torch.arange(23)
    blocks = TokenBlocks(tokens, seq_len=4)  # blocks of 5: 4 whole blocks, 3 tokens left
    assert len(blocks) == 4
    x, y = blocks[1]
    assert x.tolist() == [5, 6, 7, 8] and y.tolist() == [6, 7, 8, 9]
    assert torch.equal(torch.cat([blocks.blocks[i] for i in range(4)]), tokens[:20])
    with pytest.raises(ValueError, match="fewer than one block"):
        TokenBlocks(torch.arange(4), seq_len=4)


def test_build_datasets_tokenises_the_three_splits(micro_data):
    base = base_config("micro")
    assert len(micro_data.train) == base.max_train_tokens // (base.seq_len + 1)
    x, y = micro_data.train[0]
    assert x.shape == (base.seq_len,) and x.dtype == torch.long
    assert int(micro_data.train.blocks.max()) < base.vocab_size
    assert len(micro_data.val) > 0 and len(micro_data.test) > 0
    # the byte-level BPE round-trips text
    text = " = Season river = \n the city of the north .\n"
    assert micro_data.tokenizer.decode(micro_data.tokenizer.encode(text).ids) == text


def test_tokenizer_cache_is_reused(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "c", seed=3)
    base = base_config("micro", data_dir=str(corpus), cache_dir=str(tmp_path / "cache"))
    first = build_datasets(base)
    assert len(list((tmp_path / "cache" / "tokenizers").glob("*.json"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was trained again")

    monkeypatch.setattr(data_mod, "train_tokenizer", no_training)
    second = build_datasets(base)
    assert second.tokenizer_key == first.tokenizer_key
    assert torch.equal(second.train.blocks, first.train.blocks)

    # Different content or vocabulary size: a new key (and training, which we forbid here).
    with pytest.raises(AssertionError, match="trained again"):
        build_datasets(base.model_copy(update={"vocab_size": 400}))
    other = write_corpus(tmp_path / "d", seed=4)
    with pytest.raises(AssertionError, match="trained again"):
        build_datasets(base.model_copy(update={"data_dir": str(other)}))


def test_missing_data_files_are_named(tmp_path):
    (tmp_path / "train.txt").write_text("hello\n")
    with pytest.raises(FileNotFoundError, match="valid.txt, test.txt"):
        build_datasets(base_config("micro", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c")))


def test_hub_loading_is_the_default(monkeypatch):
    calls = []
    monkeypatch.setattr(data_mod, "load_dataset", lambda *a, **k: calls.append((a, k)) or "splits")
    assert data_mod.load_text_splits(base_config("micro")) == "splits"
    assert calls[0][0] == ("wikitext", "wikitext-2-v1")


WIKITEXT = os.environ.get("MOE_DATA_DIR")


@pytest.mark.wikitext
@pytest.mark.skipif(
    not WIKITEXT or not Path(WIKITEXT, "train.txt").is_file(), reason="MOE_DATA_DIR not set"
)
def test_real_wikitext2(cache_dir):
    base = base_config("tiny", data_dir=WIKITEXT, cache_dir=str(cache_dir),
                       max_train_tokens=None, max_val_tokens=None)  # fmt: skip
    data = build_datasets(base)
    # 2,088,628 words in train; byte-level BPE at 4k merges gives more tokens than words.
    assert 2_000_000 < data.train.num_tokens < 4_000_000
    assert len(data.val) > 0 and len(data.test) > 0
    again = build_datasets(base)
    assert again.seconds < 5  # cached reload: no tokenizer training, map cache hit


def test_a_stop_request_ends_data_preparation_while_tokenising(tmp_path):
    from moe_core.errors import TrainingCancelled

    corpus = write_corpus(tmp_path / "c", seed=5, lines=(3000, 80, 80))
    base = base_config("micro", data_dir=str(corpus), cache_dir=str(tmp_path / "cache"))
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 4  # past loading: while the tokenizer reads the text

    with pytest.raises(TrainingCancelled, match="data preparation"):
        build_datasets(base, should_stop=should_stop)
    # A tokenizer trained on part of the text is not kept.
    assert not list((tmp_path / "cache").glob("tokenizers/*.json"))

    asked.clear()
    tokenizer_done = []

    def stop_once_tokenising() -> bool:  # the tokenizer is whole: stop in the split's map
        tokenizer_done.append(bool(list((tmp_path / "cache").glob("tokenizers/*.json"))))
        return tokenizer_done[-1]

    with pytest.raises(TrainingCancelled, match="data preparation"):
        build_datasets(base, should_stop=stop_once_tokenising)
    # Nothing half-made is kept: a later preparation tokenises the whole split.
    data = build_datasets(base)
    assert len(data.train) == base.max_train_tokens // (base.seq_len + 1)
