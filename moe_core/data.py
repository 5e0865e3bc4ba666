"""WikiText-2 as blocks of token ids: `datasets` for loading, a byte-level BPE from `tokenizers`.

By default the splits come from the Hugging Face hub (`wikitext`, `wikitext-2-v1`). When
`BaseConfig.data_dir` is set, the same three splits are read from `train.txt`,
`valid.txt` and `test.txt` there (byte-identical to wikitext-2-v1's `wiki.*.tokens`).
Everything expensive is cached: the tokenizer on disk keyed by the training text's
content and the vocabulary size, the tokenised splits by `datasets`' map cache.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict, load_dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.data import Dataset

from .atomic import write_atomic
from .config import BaseConfig
from .errors import TrainingCancelled

SPLIT_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
EOT = "<|endoftext|>"


def cache_root(base: BaseConfig) -> Path:
    root = Path(base.cache_dir or os.environ.get("MOE_CACHE_DIR") or "~/.cache/moe_lab")
    return root.expanduser()


def _check(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise TrainingCancelled("stopped during data preparation", epoch=0, step=0)


def load_text_splits(base: BaseConfig) -> DatasetDict:
    """train/validation/test splits, each with one `text` column holding one line per row."""
    cache_dir = str(cache_root(base) / "datasets")
    if base.data_dir:
        data_dir = Path(base.data_dir).expanduser()
        missing = [name for name in SPLIT_FILES.values() if not (data_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"data_dir {data_dir} lacks {', '.join(missing)}")
        files = {split: str(data_dir / name) for split, name in SPLIT_FILES.items()}
        # keep_linebreaks matches the hub's rows, which end in "\n".
        return load_dataset("text", data_files=files, keep_linebreaks=True, cache_dir=cache_dir)
    return load_dataset(base.dataset_name, base.dataset_config, cache_dir=cache_dir)


def _content_hash(splits: DatasetDict) -> str:
    h = hashlib.sha256()
    for batch in splits["train"].iter(batch_size=10_000):
        h.update("".join(batch["text"]).encode())
    return h.hexdigest()[:16]


def train_tokenizer(
    splits: DatasetDict, vocab_size: int, should_stop: Callable[[], bool] | None = None
) -> Tokenizer:
    """A byte-level BPE (GPT-2 style) trained on the training split; when `should_stop`
    turns true the text stops flowing and TrainingCancelled follows."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    batches = (
        b["text"]
        for b in splits["train"].iter(batch_size=1000)
        if should_stop is None or not should_stop()
    )
    tok.train_from_iterator(batches, trainer=trainer, length=len(splits["train"]))
    _check(should_stop)  # a tokenizer trained on part of the text is no use
    return tok


def get_tokenizer(
    splits: DatasetDict, base: BaseConfig, should_stop: Callable[[], bool] | None = None
) -> tuple[Tokenizer, str]:
    """The cached tokenizer for this training text and vocab size, training it on a miss."""
    key = f"bpe-{_content_hash(splits)}-v{base.vocab_size}"
    path = cache_root(base) / "tokenizers" / f"{key}.json"
    if path.is_file():
        return Tokenizer.from_file(str(path)), key
    tok = train_tokenizer(splits, base.vocab_size, should_stop)
    write_atomic(path, lambda tmp: tok.save(str(tmp)))  # a concurrent run reads it whole
    return tok, key


class TokenBlocks(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Contiguous, non-overlapping blocks of seq_len + 1 tokens, as (input, target) pairs."""

    def __init__(self, tokens: torch.Tensor, seq_len: int):
        n = len(tokens) // (seq_len + 1)
        if n == 0:
            raise ValueError(f"{len(tokens)} tokens are fewer than one block of {seq_len + 1}")
        self.seq_len = seq_len
        self.blocks = tokens[: n * (seq_len + 1)].view(n, seq_len + 1)

    def to(self, device: torch.device | str) -> TokenBlocks:
        """The same blocks on `device` (one tensor, copied once)."""
        moved = TokenBlocks.__new__(TokenBlocks)
        moved.seq_len, moved.blocks = self.seq_len, self.blocks.to(device)
        return moved

    def head(self, n: int) -> TokenBlocks:
        """The first `n` blocks (a view)."""
        first = TokenBlocks.__new__(TokenBlocks)
        first.seq_len, first.blocks = self.seq_len, self.blocks[:n]
        return first

    def __len__(self) -> int:
        return self.blocks.size(0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.blocks[i]
        return block[:-1], block[1:]

    @property
    def num_tokens(self) -> int:
        return self.blocks.size(0) * self.seq_len


class Batches:
    """(input, target) batches of a TokenBlocks, gathered by index from its one tensor, on
    whatever device that tensor is: on a GPU, a step's batch is one gather there, with no
    host-to-device copy and no per-sample collation.

    The order is DataLoader's for the same arguments and generator (a test holds it), and
    so is what it draws from the random generators: when an iterator is made, one int64
    (DataLoader's "base seed") from `generator`, else from torch's global generator; when
    shuffling, a permutation from `generator` at the first batch and another at the end. So a run that switched
    from DataLoader to Batches trains on the same batches with the same dropout masks, and
    the Trainer's resume (which replays an epoch's draws) works as before.
    """

    def __init__(
        self,
        blocks: TokenBlocks,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.blocks, self.batch_size = blocks, batch_size
        self.shuffle, self.drop_last, self.generator = shuffle, drop_last, generator

    def __len__(self) -> int:
        n = len(self.blocks)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # the base seed
        return self._batches()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = self.blocks.blocks  # [n, seq_len + 1]
        n = data.size(0)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(data.device)
        for i in range(len(self)):
            if self.shuffle:
                batch = data.index_select(0, order[i * self.batch_size : (i + 1) * self.batch_size])
            else:
                batch = data[i * self.batch_size : (i + 1) * self.batch_size]
            yield batch[:, :-1], batch[:, 1:]  # [B, T] each
        if self.shuffle:
            # RandomSampler draws a second permutation when it runs out (of which it yields
            # num_samples % n items: none), and DataLoader always runs it out.
            torch.randperm(n, generator=self.generator)


@dataclass
class WikiTextData:
    train: TokenBlocks
    val: TokenBlocks
    test: TokenBlocks
    tokenizer: Tokenizer
    tokenizer_key: str
    seconds: float


def _token_ids(
    split: Any,  # a datasets.Dataset (the package is untyped)
    tokenizer: Tokenizer,
    tokenizer_key: str,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    def encode(batch: dict[str, Any]) -> dict[str, list[list[int]]]:
        _check(should_stop)  # every 1000 lines: a cancel need not wait for the whole split
        return {"ids": [e.ids for e in tokenizer.encode_batch(batch["text"])]}

    # An explicit fingerprint: `datasets` cannot hash a Rust tokenizer deterministically,
    # and without one every run would re-tokenise instead of hitting the cache.
    mapped = split.map(
        encode,
        batched=True,
        batch_size=1000,
        remove_columns=split.column_names,
        new_fingerprint=f"{split._fingerprint}-{tokenizer_key}",
        desc="tokenising",
    )
    # Flatten the arrow list column without a Python loop.
    ids: np.ndarray = mapped.data.column("ids").combine_chunks().flatten().to_numpy()
    return ids


def build_datasets(base: BaseConfig, should_stop: Callable[[], bool] | None = None) -> WikiTextData:
    """Load, tokenise (cached) and cut WikiText-2 into blocks of `base.seq_len` + 1 tokens.

    `should_stop` is consulted between the stages and while tokenising; when it turns true
    the preparation ends with TrainingCancelled (a cancel must not wait for the data)."""
    start = time.perf_counter()
    _check(should_stop)
    splits = load_text_splits(base)
    _check(should_stop)
    tokenizer, key = get_tokenizer(splits, base, should_stop)
    caps = {
        "train": base.max_train_tokens,
        "validation": base.max_val_tokens,
        "test": base.max_val_tokens,
    }
    blocks = {}
    for split, cap in caps.items():
        ids = _token_ids(splits[split], tokenizer, key, should_stop)[:cap]
        blocks[split] = TokenBlocks(torch.from_numpy(ids.astype(np.int64)), base.seq_len)
    return WikiTextData(
        train=blocks["train"],
        val=blocks["validation"],
        test=blocks["test"],
        tokenizer=tokenizer,
        tokenizer_key=key,
        seconds=time.perf_counter() - start,
    )
