"""A small generated corpus shaped like WikiText-2, so tests need no network or big files."""

import random
from pathlib import Path

WORDS = (
    "the of and in to a was is for on as by with he at from his an were are which this "
    "that it be or had first also its new after two time game season war city team film "
    "album song river north south during between when there would their they been over "
    "only other into most some while may later three years world national state music"
).split()


def write_corpus(
    directory: Path, seed: int = 0, lines: tuple[int, int, int] = (600, 80, 80)
) -> Path:
    """A small WikiText-shaped corpus (headings, paragraphs, blank lines) in three files."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for name, n in zip(("train.txt", "valid.txt", "test.txt"), lines, strict=True):
        out = []
        for i in range(n):
            if i % 25 == 0:
                out.append(f" = {rng.choice(WORDS).title()} {rng.choice(WORDS)} = ")
            elif i % 5 == 0:
                out.append(" ")
            else:
                out.append(
                    " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) + " . "
                )
        (directory / name).write_text("\n".join(out) + "\n")
    return directory
