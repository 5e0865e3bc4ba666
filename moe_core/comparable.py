"""When two runs' validation cross-entropies can be compared: a verdict against a dense
baseline means something only if both were measured in the same units on the same set.
Torch-free: the API refuses an incomparable baseline before anything is stored, the store
refuses to record one, and the criteria refuse to judge one.

What makes cross-entropy comparable (BaseConfig's fields):

- `dataset_name`, `dataset_config`: the text; another corpus is another task;
- `vocab_size`: the tokenizer, a byte-level BPE trained on the training text to this size;
  CE is in nats per token, and another vocabulary cuts the text into other tokens;
- `seq_len`: the context each prediction has, and how the validation text is cut into
  blocks;
- `max_val_tokens`: the validation set itself (its first N tokens).

What does not: the seed (noise, which the paired test over seeds measures), the model's
sizes and routing (what is being compared), the training budget (`max_train_tokens`,
`num_epochs`, `learning_rate`: a choice of the experiment, the same in a study or a sweep
by construction), and how the device computes (`precision`, `compile`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COMPARABLE_FIELDS = ("dataset_name", "dataset_config", "vocab_size", "seq_len", "max_val_tokens")
# The engine's defaults, for a stored base that predates a field.
_DEFAULTS: dict[str, Any] = {
    "dataset_name": "wikitext",
    "dataset_config": "wikitext-2-v1",
    "vocab_size": 10000,
    "seq_len": 256,
    "max_val_tokens": None,
}


def differences(base: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The fields, of COMPARABLE_FIELDS, in which a run's base and its baseline's differ:
    name -> (the run's value, the baseline's). Empty when their CEs compare."""
    return {
        name: (base.get(name, _DEFAULTS[name]), baseline.get(name, _DEFAULTS[name]))
        for name in COMPARABLE_FIELDS
        if base.get(name, _DEFAULTS[name]) != baseline.get(name, _DEFAULTS[name])
    }


def describe(differing: Mapping[str, tuple[Any, Any]]) -> str:
    """'vocab_size 4096 vs 512, seq_len 64 vs 32' (this run's value first)."""
    return ", ".join(f"{name} {mine} vs {theirs}" for name, (mine, theirs) in differing.items())


class NotComparable(ValueError):
    """A run and a baseline whose cross-entropies cannot be compared; `differing` says why."""

    def __init__(
        self, differing: Mapping[str, tuple[Any, Any]], what: str = "the baseline"
    ) -> None:
        self.differing = dict(differing)
        super().__init__(
            f"{what} is not comparable: its cross-entropy is measured on other data, tokens or "
            f"blocks ({describe(differing)}); {', '.join(differing)} must match"
        )


def check(base: Mapping[str, Any], baseline: Mapping[str, Any], what: str = "the baseline") -> None:
    """Raises NotComparable when the two bases' CEs cannot be compared."""
    differing = differences(base, baseline)
    if differing:
        raise NotComparable(differing, what)
