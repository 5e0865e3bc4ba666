"""`python -m benchmarks.gpu_check`: a GPU's first minute, before `python -m benchmarks
gpu`. Prints torch and the device, then, through the Trainer's own epoch (bf16, eager, data
on the device), how many host syncs an epoch costs for dense and three MoE presets: once
for an epoch of 4 steps and once for 12. Equal counts mean no sync per step (the epoch's
one read of its statistics and clocks is all). A step that fails fails the check (exit 1),
so the device's time is not then spent on a benchmark that cannot run."""

from __future__ import annotations

import sys
import warnings

import torch
import torch.nn.functional as F

from moe_core.config import base_config, dense_config, get_experiment_configs

from .gpu import _trainer


def syncs_per_epoch(name: str, steps: int) -> tuple[int, list[str]]:
    base = base_config("spec")
    config = dense_config(base) if name == "dense" else get_experiment_configs(base)[name]
    trainer = _trainer(config, base, dense=name == "dense", mode="bf16", steps=steps,
                       device=torch.device("cuda"))  # fmt: skip
    trainer.train_epoch()  # warm: allocator, kernels, cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train_epoch()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    messages = [str(w.message).splitlines()[0][:120] for w in caught
                if "synchroniz" in str(w.message).lower()]  # fmt: skip
    return len(messages), sorted(set(messages))


def main() -> int:
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"F.grouped_mm {'yes' if hasattr(F, 'grouped_mm') else 'no (torch._grouped_mm)'}")  # fmt: skip
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    print(f"device {torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}")
    for name in ("dense", "baseline", "top2", "dropless"):
        short, what = syncs_per_epoch(name, 4)
        long, _ = syncs_per_epoch(name, 12)
        grows = long > short
        print(f"{name}: {short} syncs in an epoch of 4 steps, {long} in 12"
              f"{'  <- grows with the steps' if grows else ''}")  # fmt: skip
        for message in what[:4]:
            print(f"    {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
