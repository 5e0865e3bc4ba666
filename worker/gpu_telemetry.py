"""The worker's GPU, read through NVML (`nvidia-ml-py`) with each heartbeat: utilisation,
memory used and total, power. The agent runs in the worker's main process, which never
touches CUDA; NVML is the driver's own monitoring library and needs no CUDA context.

A reading never fails a heartbeat: on a CPU worker there is none, and where NVML is
missing or errs the reading is None (logged once), so the service shows it absent, never
zero.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from store.models import utcnow

log = logging.getLogger(__name__)


def nvml_index(device: str | None, environ: Mapping[str, str] = os.environ) -> int | None:
    """The NVML index of the GPU `device` names, or None for a CPU worker. NVML counts the
    machine's GPUs and ignores CUDA_VISIBLE_DEVICES, which worker.gpu_slot sets: torch's
    `cuda:N` is the N-th GPU that variable lists."""
    if device is not None and not device.startswith("cuda"):
        return None
    index = int(device.partition(":")[2] or 0) if device else 0
    visible = [v.strip() for v in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible:
        if index >= len(visible) or not visible[index].isdigit():
            return None  # hidden, or named by UUID: not worth guessing at
        return int(visible[index])
    return index


class GpuTelemetry:
    """One worker's GPU reader; `read()` is cheap (a few driver calls)."""

    def __init__(self, device: str | None, environ: Mapping[str, str] = os.environ) -> None:
        self.index = nvml_index(device, environ)
        self._handle: Any = None
        self._unavailable = self.index is None  # a CPU worker, or NVML failed to start
        self._warned = False

    def read(self) -> dict[str, Any] | None:
        """The `workers.gpu_*` columns of a reading, or None when there is none."""
        if self._unavailable:
            return None
        try:
            import pynvml

            if self._handle is None:
                pynvml.nvmlInit()
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            handle = self._handle
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            reading = {
                "gpu_name": name.decode() if isinstance(name, bytes) else str(name),
                "gpu_utilization": float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                "gpu_memory_used": int(memory.used),
                "gpu_memory_total": int(memory.total),
                "gpu_power_watts": _power_watts(pynvml, handle),
                "gpu_read_at": utcnow(),
            }
        except Exception as exc:  # no library, no driver, a lost GPU: no reading
            if self._handle is None:
                # NVML never started (a machine without an NVIDIA driver, where an unset
                # MOE_DEVICE trains on the CPU): not worth a warning, nor a try every beat
                self._unavailable = True
                log.info("GPU telemetry: no NVML (%s); no GPU readings", exc)
            elif not self._warned:
                log.warning("GPU telemetry: NVML gives no reading (%s); shown as absent", exc)
                self._warned = True
            return None
        return reading


def _power_watts(pynvml: Any, handle: Any) -> float | None:
    """Some GPUs do not report power (NVML's NotSupported): the rest of the reading stands."""
    try:
        return pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # milliwatts
    except pynvml.NVMLError:
        return None
