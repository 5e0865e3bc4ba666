"""What every section gets: the device, its timer, repeat counts and the smoke switch."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from .harness import DeviceTimer, interleave


@dataclass
class Context:
    device: torch.device
    smoke: bool = False
    repeats: int = 7
    warmup: int = 2
    # bf16 autocast on CUDA (the GPU path); None on the CPU, where bf16 is slower.
    amp_dtype: torch.dtype | None = None
    compile: bool = False
    # What a section takes besides (e.g. gpu_parts: the parts of the gpu section to run).
    options: dict[str, Any] = field(default_factory=dict)
    timer: DeviceTimer = field(init=False)

    def __post_init__(self) -> None:
        self.timer = DeviceTimer(self.device)

    def run(self, variants, *, repeats: int | None = None, warmup: int | None = None):
        return interleave(
            variants,
            repeats=self.repeats if repeats is None else repeats,
            warmup=self.warmup if warmup is None else warmup,
            timer=self.timer,
        )

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        return {
            "smoke": self.smoke,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "amp_dtype": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else None,
            "compile": self.compile,
        }
