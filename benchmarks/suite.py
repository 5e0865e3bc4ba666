"""Runs the sections, checks the targets, writes the JSON and prints the table."""

from __future__ import annotations

import datetime as dt
import importlib
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from .context import Context
from .harness import environment
from .report import check_targets, format_table, write_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# section name -> module with `run(ctx) -> dict`; the order of the table.
SECTIONS = {
    "moe_layer": "benchmarks.moe_layer",
    "model_step": "benchmarks.model_step",
    "trainer_overhead": "benchmarks.trainer_overhead",
    "data": "benchmarks.data_pipeline",
    "service": "benchmarks.service",
    "recovery": "benchmarks.recovery",
    "gpu": "benchmarks.gpu",
    "distributed": "benchmarks.distributed",
}


def run_suite(
    names: list[str] | None = None,
    *,
    device: str = "cpu",
    smoke: bool = False,
    repeats: int | None = None,
    threads: int | None = None,
    compile: bool = False,
    amp: bool = True,
    out: Path | None = None,
    write: bool = True,
    verbose: bool = True,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `names` (default all) and return the results; write them unless `write` is off."""
    names = names or list(SECTIONS)
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU")
    ctx = Context(
        device=dev,
        smoke=smoke,
        repeats=repeats or (1 if smoke else 7),
        warmup=1 if smoke else 2,
        amp_dtype=torch.bfloat16 if dev.type == "cuda" and amp else None,
        compile=compile,
        options=options or {},
    )
    results: dict[str, Any] = {
        "environment": environment(dev),
        "settings": ctx.describe(),
        "sections": {},
    }
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        if verbose:
            print(f"-- {name} ...", flush=True)
        try:
            body: dict[str, Any] = importlib.import_module(SECTIONS[name]).run(ctx)
        except Exception as exc:  # one broken section must not hide the others' figures
            body = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        body["seconds"] = time.perf_counter() - t0
        results["sections"][name] = body
    results["seconds"] = time.perf_counter() - started
    results["targets"] = check_targets(results)
    if write:
        if out is None and len(names) == 1 and not smoke:
            # a section whose figures are the device's has a file of its own (results/gpu-H200.json)
            output_name = getattr(importlib.import_module(SECTIONS[names[0]]), "output_name", None)
            if output_name is not None:
                out = RESULTS_DIR / output_name(dev)
        if out is None:
            full = not smoke and names == list(SECTIONS) and repeats is None
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
            out = RESULTS_DIR / (
                "latest.json" if full else f"{stamp}{'-smoke' if smoke else ''}.json"
            )
        write_json(results, out)
        results["written_to"] = str(out)
    if verbose:
        print(format_table(results), flush=True)
        if write:
            print(f"\nwrote {out}", flush=True)
    return results
