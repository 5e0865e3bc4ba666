"""Part 4: WikiText-2 through the engine's pipeline, cold (tokenizer training + map) and
from its cache, in seconds, each in a fresh temporary cache directory.

The corpus is `MOE_DATA_DIR`, else /work/shared/data/wikitext-2 when it exists. The smoke
run cuts the first lines of each split into a temporary directory, so it exercises the
same code on a corpus small enough for the test suite.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from moe_core.config import base_config
from moe_core.data import SPLIT_FILES, build_datasets

from .context import Context
from .harness import summarize

SHARED_WIKITEXT = Path("/work/shared/data/wikitext-2")
SMOKE_LINES = 1500


def data_dir() -> Path | None:
    env = os.environ.get("MOE_DATA_DIR")
    if env:
        return Path(env)
    return SHARED_WIKITEXT if (SHARED_WIKITEXT / "train.txt").is_file() else None


def _head(src: Path, dst: Path, lines: int) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_FILES.values():
        with open(src / name, encoding="utf-8") as f:
            (dst / name).write_text("".join(itertools.islice(f, lines)), encoding="utf-8")
    return dst


def run(ctx: Context) -> dict[str, Any]:
    source = data_dir()
    if source is None or not (source / "train.txt").is_file():
        return {"skipped": "no WikiText-2: set MOE_DATA_DIR to a directory with train.txt"}
    # Offline: the text builder needs no hub, and a shared machine may have no network.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="moe-bench-data-") as tmp:
        corpus = _head(source, Path(tmp) / "corpus", SMOKE_LINES) if ctx.smoke else source
        preset = "micro" if ctx.smoke else "spec"
        base = base_config(preset, data_dir=str(corpus), cache_dir=str(Path(tmp) / "cache"))
        t0 = time.perf_counter()
        data = build_datasets(base)
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(1 if ctx.smoke else 3):
            t0 = time.perf_counter()
            build_datasets(base)
            warm.append(time.perf_counter() - t0)
    return {
        "rows": [
            {
                "name": "first tokenisation (tokenizer training + map)",
                "params": dict(
                    corpus=str(source),
                    smoke_lines=SMOKE_LINES if ctx.smoke else None,
                    vocab_size=base.vocab_size,
                ),  # fmt: skip
                "seconds": summarize([cold]),
                "train_tokens": data.train.num_tokens,
            },
            {"name": "cached reload", "params": {}, "seconds": summarize(warm)},
        ]
    }
