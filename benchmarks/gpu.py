"""Part 7, `python -m benchmarks gpu --device cuda`: what a GPU user gets, in one command
(written to results/gpu-<device name>.json). Its parts (`--parts`, default all):

- `step`: epochs of training steps through the Trainer, as a run takes them (Batches on the
  device, statistics summed on it, one sync per epoch) at the spec's sizes: dense and every
  preset in bf16, the spec's experiments in fp32 (the path workers took before), and
  dense, top-1 and top-2 in bf16 with CUDA graphs (compile=graphs); tokens/s, the ratio to
  dense in the same mode and rounds, and MFU. `--modes` picks some of fp32, bf16 and
  bf16+graphs.
- `big`: a GPU-sized model (batch 8, seq 1024, d 1024, 8 layers, FFN 4096, every layer MoE,
  8 experts): dense and top-2 in bf16 compiled (inductor takes about a minute for each of
  them); tokens/s and MFU.
- `slots`: N = 1, 2, 4, 8 spec runs at once through a real worker of N slots
  (MOE_RUNS_PER_GPU, the embedded store, no servers): the sum of the runs' tokens/s and
  the speed-up over one run alone.
- `study_engine` and `study_service`: the spec's full study (dense + the four experiments,
  20 epochs, early stopping), everything on (bf16, compile=graphs, N runs side by side),
  timed wall to wall through `python -m moe_core study --parallel N` and through POST
  /studies on one worker of N slots.
- `together` and `study_together` (benchmarks/gpu_together.py, issue 29): k = 2, 4, 8 seeds
  trained as one stack against one run alone, and the spec's study with 3 seeds trained
  together; `study_service_together` the same study through POST /studies
  (`seeds_together`: each configuration's seeds one stack on the worker).

The parts that train real runs need WikiText-2 (MOE_DATA_DIR or --data-dir); the service
parts need the service's packages (requirements/api.txt) beside torch. On the CPU only
`--smoke` runs (tiny sizes, a step or two; compiled rows there use the aot_eager backend,
and the studies do not compile: it checks the path, not the speed).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from moe_core.config import (
    EXPERIMENT_PRESETS,
    BaseConfig,
    CompileMode,
    ExperimentConfig,
    base_config,
    dense_config,
    get_experiment_configs,
)
from moe_core.data import Batches, TokenBlocks
from moe_core.presets import SPEC_EXPERIMENTS
from moe_core.runner import build_model, build_optimizer
from moe_core.sizing import train_flops_per_token
from moe_core.trainer import Trainer

from .context import Context
from .gpu_together import study_together_rows, together_rows
from .harness import ROOT, gpu_peak_flops, ratio_samples, summarize, times_summary

PARTS = (
    "step",
    "big",
    "slots",
    "study_engine",
    "study_service",
    "together",
    "study_together",
    "study_service_together",
)
MODES: dict[str, tuple[str, CompileMode]] = {
    "fp32": ("fp32", "off"),
    "bf16": ("bf16", "off"),
    "bf16+graphs": ("bf16", "graphs"),
}
GRAPHED = ("dense", "baseline", "top2")  # compiling every preset would take the budget
BIG: dict[str, Any] = dict(seq_len=1024, hidden_dim=1024, num_layers=8, num_heads=16, ffn_dim=4096,
           moe_layers=list(range(8)))  # fmt: skip
FULL: dict[str, Any] = dict(base="spec", steps=20, presets=tuple(EXPERIMENT_PRESETS), big=BIG, big_batch=8, slots=(1, 2, 4, 8), slot_tokens=600_000,
            study_parallel=5, study_epochs=None, together_k=(2, 4, 8), together_seeds=3)  # fmt: skip
SMOKE: dict[str, Any] = dict(base="micro", steps=2, presets=("baseline", "top2", "dropless"), big=dict(seq_len=64, hidden_dim=64, num_layers=2,
             num_heads=2, ffn_dim=128, moe_layers=[0, 1]), big_batch=2, slots=(1, 2),
             slot_tokens=4096, study_parallel=1, study_epochs=1, together_k=(2,), together_seeds=2)  # fmt: skip
# (study_parallel 1 at smoke: the study's process pool costs ~40 s of spawns on 2 CPU cores,
# and tests/moe_core/test_study.py holds the parallel study to the sequential one)


def run(ctx: Context) -> dict[str, Any]:
    if ctx.device.type != "cuda" and not ctx.smoke:
        return {"skipped": "needs a CUDA device (on the CPU: --smoke checks the path)", "rows": []}
    parts = tuple(ctx.options.get("gpu_parts") or PARTS)
    rows: list[dict[str, Any]] = []
    # One tokenizer cache for every part: WikiText-2 is tokenised once, not per run.
    with tempfile.TemporaryDirectory(prefix="moe-bench-cache-") as cache, _smoke_compile(ctx):
        sizes = {**(SMOKE if ctx.smoke else FULL), "cache_dir": Path(cache)}
        took = {}
        for part in parts:
            started = time.perf_counter()
            rows += PART_FUNCTIONS[part](ctx, sizes)
            took[part] = time.perf_counter() - started
    return {"rows": rows, "parts": list(parts), "part_seconds": took}


@contextlib.contextmanager
def _smoke_compile(ctx: Context) -> Iterator[None]:
    """On the CPU, compiled rows trace with aot_eager: inductor's codegen would take
    minutes for a figure that means nothing there."""
    if not ctx.smoke or ctx.device.type == "cuda":
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend="aot_eager")
    try:
        yield
    finally:
        torch.compile = original


# ---------------------------------------------------------------------------- steps


def _random_blocks(base: BaseConfig, blocks: int, device: torch.device) -> TokenBlocks:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, base.vocab_size, (blocks * (base.seq_len + 1),), generator=g)
    return TokenBlocks(tokens, base.seq_len).to(device)


def _trainer(config: ExperimentConfig, base: BaseConfig, *, dense: bool, mode: str,
             steps: int, device: torch.device) -> Trainer:  # fmt: skip
    """A Trainer as run_single_experiment builds one, on `steps` batches of random tokens
    already on the device."""
    precision, compile = MODES[mode]
    torch.manual_seed(base.seed)
    model = build_model(config, base, dense).to(device)
    blocks = _random_blocks(base, steps * config.batch_size, device)
    loader = Batches(blocks, config.batch_size, shuffle=True, drop_last=True,
                     generator=torch.Generator().manual_seed(base.seed))  # fmt: skip
    return Trainer(model, loader, loader, build_optimizer(model, config, base,
                   fused=device.type == "cuda"), device, verbose=False,
                   amp_dtype=torch.bfloat16 if precision == "bf16" else None,
                   compile=compile)  # fmt: skip


def _epoch_rows(ctx: Context, label: str, base: BaseConfig, members: dict[str, tuple],
                steps: int) -> list[dict[str, Any]]:  # fmt: skip
    """Time an epoch of `steps` steps of every member (name -> (config, dense, mode)) in the
    same interleaved rounds; one row per member, its ratio to the dense run of its mode."""
    trainers = {
        name: _trainer(config, base, dense=dense, mode=mode, steps=steps, device=ctx.device)
        for name, (config, dense, mode) in members.items()
    }
    # Two warm-up epochs: compilation, then CUDA graph recording, are done by then.
    samples = ctx.run({n: t.train_epoch for n, t in trainers.items()},
                      repeats=max(ctx.repeats - 4, 1), warmup=1 if ctx.smoke else 2)  # fmt: skip
    times = times_summary(samples)
    peak = gpu_peak_flops(ctx.device) if ctx.device.type == "cuda" else None
    rows: list[dict[str, Any]] = []
    for name, (config, dense, mode) in members.items():
        tokens = steps * config.batch_size * base.seq_len
        tps = tokens / times[name]["median"]
        dense_name = f"dense {mode}"
        row = {
            "name": f"{label}: {name}",
            "params": {
                "mode": mode,
                "batch_size": config.batch_size,
                "seq_len": base.seq_len,
                "hidden_dim": base.hidden_dim,
                "steps": steps,
                "experts": None if dense else config.experts(base),
                "top_k": None if dense else config.top_k,
            },  # fmt: skip
            "tokens_per_s": {name: tps},
            # per-round ratio of tokens/s: the dense run's time over this one's, per token
            "ratio": summarize(
                [
                    r * (config.batch_size / members[dense_name][0].batch_size)
                    for r in ratio_samples(samples, dense_name, name)
                ]
            ),  # fmt: skip
            "ratio_of": f"tokens/s / {dense_name} tokens/s",
            "times_s": {name: times[name], dense_name: times[dense_name]},
        }
        if peak:
            row["mfu"] = train_flops_per_token(config, base, dense=dense) * tps / peak
        rows.append(row)
    if peak:  # each MoE row's MFU over the dense row's of its mode
        mfu = {row["name"]: row["mfu"] for row in rows}
        for row, (_, _, mode) in zip(rows, members.values(), strict=True):
            row["mfu_vs_dense"] = row["mfu"] / mfu[f"{label}: dense {mode}"]
    return rows


def step_rows(ctx: Context, sizes: dict[str, Any]) -> list[dict[str, Any]]:
    """Each mode's members timed in rounds of their own, beside that mode's dense run: fp32
    for dense and the spec's experiments, bf16 for every preset, CUDA graphs for GRAPHED."""
    base = base_config(sizes["base"])
    configs = get_experiment_configs(base)
    in_mode = {"fp32": [n for n in sizes["presets"] if n in SPEC_EXPERIMENTS],
               "bf16": list(sizes["presets"]),
               "bf16+graphs": [n for n in sizes["presets"] if n in GRAPHED]}  # fmt: skip
    rows = []
    for mode in ctx.options.get("gpu_modes") or MODES:
        members = {f"dense {mode}": (dense_config(base), True, mode)}
        members |= {f"{name} {mode}": (configs[name], False, mode) for name in in_mode[mode]}
        rows += _epoch_rows(ctx, f"{sizes['base']} step", base, members, sizes["steps"])
    return rows


def big_rows(ctx: Context, sizes: dict[str, Any]) -> list[dict[str, Any]]:
    base = base_config("spec", **sizes["big"])
    batch = {"batch_size": sizes["big_batch"]}
    configs = get_experiment_configs(base)
    members = {
        "dense bf16+graphs": (dense_config(base).model_copy(update=batch), True, "bf16+graphs"),
        "top2 bf16+graphs": (configs["top2"].model_copy(update=batch), False, "bf16+graphs"),
    }
    return _epoch_rows(ctx, "GPU-sized", base, members, sizes["steps"])


# ---------------------------------------------------------------------------- the service


def _data_dir() -> Path | None:
    path = os.environ.get("MOE_DATA_DIR") or str(ROOT.parent / "shared/data/wikitext-2")
    return Path(path) if Path(path, "train.txt").is_file() else None


@contextlib.contextmanager
def embedded_worker(ctx: Context, slots: int, tmp: Path, cache: Path) -> Iterator[Any]:
    """A real `celery worker` of `slots` pool processes on the embedded store (SQLite and
    the SQL broker under `tmp`: no servers), training on `ctx.device`; yields its
    Settings. The worker is stopped (SIGTERM, then SIGKILL) at the end."""
    from local_deployment.processes import StartedProcesses
    from store.migrate import upgrade_database
    from store.settings import Settings

    settings = Settings(home=tmp / "home", data_dir=_data_dir(), cache_dir=cache,
                        device=str(ctx.device), runs_per_gpu=slots, progress_interval=5.0)  # fmt: skip
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.database_url)
    # On the CPU the slots share the cores; on a GPU torch keeps its own default.
    threads = max(1, (os.cpu_count() or 1) // slots) if ctx.device.type == "cpu" else None
    with StartedProcesses(tmp, tails=False) as started:
        worker = started.worker(settings, f"bench{slots}", wait=False, threads=threads)
        worker.wait_ready(timeout=120)
        try:
            yield settings
        finally:
            worker.shutdown(timeout=60)


def _wait(predicate, timeout: float, what: str, process=None, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def _client(settings):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from store.settings import get_settings

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    return TestClient(app)


def _finished(api, ids: list[int], timeout: float) -> list[dict]:
    def done():
        runs = [api.get(f"/experiments/{i}").json() for i in ids]
        return (
            runs if all(r["status"] in ("succeeded", "failed", "cancelled") for r in runs) else None
        )

    runs = _wait(done, timeout, f"runs {ids}")
    failed = [r for r in runs if r["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"run {failed[0]['id']} {failed[0]['status']}: {failed[0]['error']}")
    return runs


def _unavailable() -> str | None:
    if _data_dir() is None:
        return "no WikiText-2 (set MOE_DATA_DIR)"
    try:
        import celery  # noqa: F401
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        return f"the service's packages are missing ({exc.name}): see benchmarks/README.md"
    return None


def slot_rows(ctx: Context, sizes: dict[str, Any]) -> list[dict[str, Any]]:
    """N runs submitted at once to one worker of max(N) slots, for each N in turn (a slot
    left idle costs its neighbours nothing, and the worker starts once)."""
    reason = _unavailable()
    if reason:
        return [{"name": "runs per GPU", "skipped": reason}]
    rows, alone = [], None
    base = {"max_train_tokens": sizes["slot_tokens"], "num_epochs": 2, "compile": "off"}
    with tempfile.TemporaryDirectory(prefix="moe-bench-gpu-") as tmp:
        worker = embedded_worker(ctx, max(sizes["slots"]), Path(tmp), sizes["cache_dir"])
        with worker as settings, _client(settings) as api:
            for n in sizes["slots"]:
                started = time.monotonic()
                ids = []
                for i in range(n):
                    body = {"name": f"slot{n}-{i}", "preset": "baseline",
                            "base_preset": sizes["base"], "base": base}  # fmt: skip
                    response = api.post("/experiments", json=body)
                    response.raise_for_status()
                    ids.append(response.json()["id"])
                runs = _finished(api, ids, timeout=900)
                wall = time.monotonic() - started
                # The last epoch of each: warm (data, kernels), and all N running at once.
                last = [api.get(f"/experiments/{i}/metrics").json()["epochs"][-1] for i in ids]
                total = sum(epoch["tokens_per_sec"] for epoch in last)
                alone = alone or total
                rows.append({
                    "name": f"{n} run(s) per GPU",
                    "params": {"runs": n, "base": sizes["base"], "preset": "baseline",
                               "max_train_tokens": sizes["slot_tokens"],
                               "precision": runs[0]["precision"]},
                    "seconds": summarize([wall]),
                    "aggregate_tokens_per_s": total,
                    "speedup_vs_one": total / alone,
                })  # fmt: skip
    return rows


def _study_base(sizes: dict[str, Any]) -> dict[str, Any]:
    if sizes["study_epochs"]:  # smoke, on the CPU: inductor would compile for minutes
        return {"num_epochs": sizes["study_epochs"], "compile": "off"}
    return {"compile": "graphs", "precision": "auto"}


def timed_study(
    ctx: Context, sizes: dict[str, Any], **study: Any
) -> tuple[dict[str, Any], float] | None:
    """The spec's study through the engine (moe_core.study.main with `study`'s arguments) on
    WikiText-2 at the part's sizes: its summary and wall seconds; None without the data."""
    data = _data_dir()
    if data is None:
        return None
    from moe_core.study import main

    with tempfile.TemporaryDirectory(prefix="moe-bench-study-") as tmp:
        base = base_config(sizes["base"], data_dir=str(data), cache_dir=str(sizes["cache_dir"]),
                           **_study_base(sizes))  # fmt: skip
        started = time.monotonic()
        summary = main(base, tmp, device=ctx.device, verbose=False, **study)
        return summary, time.monotonic() - started


def study_engine_rows(ctx: Context, sizes: dict[str, Any]) -> list[dict[str, Any]]:
    n = sizes["study_parallel"]
    timed = timed_study(ctx, sizes, parallel=n)
    if timed is None:
        return [{"name": "study --parallel", "skipped": "no WikiText-2 (set MOE_DATA_DIR)"}]
    summary, wall = timed
    runs = [summary["dense"], *summary["experiments"].values()]
    return [{
        "name": f"the spec's study: python -m moe_core study --parallel {n}",
        "params": {"base": sizes["base"], "parallel": n, "precision": summary["precision"],
                   "compile": summary["compile"], "experiments": list(SPEC_EXPERIMENTS),
                   "epochs_trained": [len(r["metrics"]["train_losses"]) for r in runs]},
        "seconds": summarize([wall]),
    }]  # fmt: skip


def study_service_rows(
    ctx: Context, sizes: dict[str, Any], *, seeds: int = 1, together: bool | None = None
) -> list[dict[str, Any]]:
    """The spec's study through POST /studies and one embedded worker; `seeds` per
    configuration, trained as one stack each with `together` (worker.together)."""
    reason = _unavailable()
    if reason:
        return [{"name": "POST /studies", "skipped": reason}]
    n = sizes["study_parallel"]
    base = {**_study_base(sizes), **({} if together is None else {"seeds_together": together})}
    with tempfile.TemporaryDirectory(prefix="moe-bench-gpu-") as tmp:
        worker = embedded_worker(ctx, n, Path(tmp), sizes["cache_dir"])
        with worker as settings, _client(settings) as api:
            started = time.monotonic()
            response = api.post("/studies", json={"name": "bench", "base_preset": sizes["base"],
                                                  "base": base, "seeds": seeds})  # fmt: skip
            response.raise_for_status()
            study = response.json()
            runs = _finished(api, [m["id"] for m in study["members"]], timeout=3600)
            wall = time.monotonic() - started
            precision = api.get(f"/studies/{study['id']}").json()["precision"]
            stacks = [api.get(f"/experiments/{r['id']}/result").json().get("together")
                      for r in runs]  # fmt: skip
    row = {
        "name": (f"the spec's study, {seeds} seeds trained together: " if together
                 else "the spec's study: ") + f"POST /studies, one worker of {n} slots",
        "params": {"base": sizes["base"], "slots": n, "precision": precision, "seeds": seeds,
                   "compile": base["compile"], "experiments": list(SPEC_EXPERIMENTS),
                   "epochs_trained": [r["current_epoch"] for r in runs],
                   "stacked_runs": sum(s is not None for s in stacks)},
        "seconds": summarize([wall]),
    }  # fmt: skip
    if together:
        row["target"] = {"seconds_at_most": 180, "met": None if ctx.smoke else wall <= 180}
    return [row]


def study_service_together_rows(ctx: Context, sizes: dict[str, Any]) -> list[dict[str, Any]]:
    return study_service_rows(ctx, sizes, seeds=sizes["together_seeds"], together=True)


PART_FUNCTIONS = {
    "step": step_rows,
    "big": big_rows,
    "slots": slot_rows,
    "study_engine": study_engine_rows,
    "study_service": study_service_rows,
    "together": together_rows,
    "study_together": study_together_rows,
    "study_service_together": study_service_together_rows,
}


def output_name(device: torch.device) -> str:
    """results/gpu-<device name>.json: the GPU's name, as a file name."""
    from .harness import device_name

    name = "".join(c if c.isalnum() else "-" for c in device_name(device)).strip("-")
    return f"gpu-{'-'.join(filter(None, name.split('-')))}.json"
