"""The spec's `main()`: the study. A dense baseline and each experiment (per seed, with
`seeds`), judged against the dense run, written to `experiment_results.json` and
`dense_model.pt`. With `parallel` > 1 its runs train side by side in that many processes,
on one GPU (each with a share of its memory) or on the CPU's cores; every run seeds itself,
so the results are the sequential study's."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .atomic import write_json_atomic
from .config import BaseConfig, StudyRun, check_or_raise, study_runs
from .criteria import format_table, format_verdict, judge, judge_seeds
from .measures import best_val_loss
from .provenance import source_commit
from .runner import resolve_device, resolve_precision, run_single_experiment
from .together_policy import resolve_together
from .verdict_records import SeedsVerdict, Verdict

if TYPE_CHECKING:  # torch.distributed only where a study is parallel
    from .parallel import Parallel


def evaluate_success_criteria(
    results: Mapping[str, Mapping[str, Any]],
    dense_baseline_loss: float | None,
    dense_results: Mapping[str, Any] | None = None,
    *,
    verbose: bool = True,
) -> dict[str, Verdict]:
    """Judge each experiment (name -> result) against the dense baseline; print and return.

    With `dense_results` (the dense run's result) the gap and throughput comparisons are
    made too; with only `dense_baseline_loss` (the spec's two arguments), the primary
    criterion uses the loss alone and each verdict says the gap was not judged.
    """
    verdicts: dict[str, Verdict] = {}
    for name, result in results.items():
        verdicts[name] = judge(result, dense_results, dense_baseline_loss)
        if verbose:
            print(format_verdict(name, verdicts[name]), flush=True)
    return verdicts


def _model_path(out: Path, run: StudyRun, first_seed: int) -> Path | None:
    # The first seed's dense weights are the spec's dense_model.pt.
    if not run.dense:
        return None
    return out / ("dense_model.pt" if run.seed == first_seed else f"dense_model.seed{run.seed}.pt")


# A process of a parallel study: its data, prepared once, and how it trains.
_process: dict[str, Any] = {}


def _start_process(base: BaseConfig, device: str, threads: int, share: float) -> None:
    from .data import build_datasets  # tokenised once per process, from the disk cache

    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        # Runs side by side on one GPU: each may use its share of the memory, so that one
        # cannot take what its neighbours need (the caching allocator keeps what it took).
        # It takes an index: a bare "cuda" is the current device.
        index = torch.cuda.current_device() if dev.index is None else dev.index
        torch.cuda.set_per_process_memory_fraction(share, index)
    _process.update(data=build_datasets(base), device=dev)


def _run_in_process(run: StudyRun, model_path: Path | None, verbose: bool) -> dict[str, Any]:
    data, device = _process["data"], _process["device"]
    return run_single_experiment(run.config, data.train, data.val, run.base, device,
                                 dense=run.dense, model_path=model_path,
                                 test_dataset=data.test, verbose=verbose)  # fmt: skip


def _train_together(plan: list[StudyRun], paths: list[Path | None], data: Any,
                    device: torch.device, verbose: bool) -> list[dict[str, Any]]:  # fmt: skip
    """Every configuration's seeds as one stack; the results in the plan's order. A study
    needs every run: a replica that failed fails it, as it would apart."""
    from .together import run_together

    results: dict[int, dict[str, Any]] = {}
    for key in dict.fromkeys((run.dense, run.preset) for run in plan):
        members = [i for i, run in enumerate(plan) if (run.dense, run.preset) == key]
        trained = run_together(plan[members[0]].config, data.train, data.val,
                               [plan[i].base for i in members], device, dense=key[0],
                               model_paths=[paths[i] for i in members],
                               test_dataset=data.test, verbose=verbose)  # fmt: skip
        for i, result in zip(members, trained, strict=True):
            if isinstance(result, BaseException):
                raise result
            results[i] = result
    return [results[i] for i in range(len(plan))]


def main(
    base_config: BaseConfig | None = None,
    out_dir: str | os.PathLike[str] = ".",
    experiments: list[str] | None = None,
    device: str | torch.device | None = None,
    verbose: bool = True,
    seeds: int = 1,
    parallel: int = 1,
    ranks: Parallel | None = None,
    seeds_together: bool | None = None,
) -> dict[str, Any]:
    """The spec's pipeline: dense baseline (early stopping), the spec's four experiments (or
    `experiments`, any of EXPERIMENT_PRESETS), evaluation,
    and `experiment_results.json` plus `dense_model.pt` in `out_dir`.

    With `seeds` > 1 the dense baseline and every experiment run once per seed (base.seed,
    base.seed + 1, ...) and each experiment is judged on its differences from the dense run
    of the same seed: means, standard errors and whether they are significant. With
    `parallel` > 1, that many runs train at once, each in a process of its own. With
    `ranks` (moe_core.parallel: this process is one rank of a torchrun launch), every run
    trains on all the launch's ranks, one after another, and rank 0 writes the files.
    With `seeds_together` (None: base.seeds_together, and where that is None too
    moe_core.together_policy decides: on a GPU where the stacks fit), each configuration's seeds train as one stacked model (moe_core.together), giving
    what they give apart.
    """
    from .data import build_datasets  # here, so importing the study needs no `datasets`

    if parallel < 1 or (ranks is not None and parallel > 1):
        raise ValueError(f"parallel must be 1 on several ranks, at least 1 otherwise: {parallel}")
    base = base_config or BaseConfig()
    device = ranks.device if ranks is not None else resolve_device(device)
    verbose = verbose and (ranks is None or ranks.main)
    # One precision for every run, resolved here, so that verdicts compare like with like.
    base = base.model_copy(update={"precision": resolve_precision(base.precision, device)})
    plan = study_runs(base, experiments, seeds)
    for run in plan:  # everything checked before anything trains
        check_or_raise(run.config, run.base, dense=run.dense)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    commit = source_commit()  # at the start: the code that runs, whatever changes meanwhile

    # the seed changes initialisation and order, not the data; its caches written once
    data = ranks.main_first(lambda: build_datasets(base)) if ranks else build_datasets(base)
    threads = torch.get_num_threads()
    if verbose:
        print(
            f"data: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test blocks"
            f" of {base.seq_len} tokens, tokenizer {data.tokenizer_key} ({data.seconds:.1f}s);"
            f" device {device}, {base.precision}, torch {torch.__version__}, {threads} threads,"
            f" {seeds} seed(s), {parallel} run(s) at once",
            flush=True,
        )
    paths = [_model_path(out, run, base.seed) for run in plan]
    groups = {(run.dense, run.preset): run.config for run in plan}
    asked = seeds_together if seeds_together is not None else base.seeds_together
    together = resolve_together(asked, [(c, d) for (d, _), c in groups.items()], base,
                                device, replicas=seeds)  # fmt: skip
    if together and (parallel > 1 or ranks is not None):
        raise ValueError("seeds_together trains each configuration's seeds in this process:"
                         " not with parallel > 1 or on several ranks")  # fmt: skip
    if together:
        results = _train_together(plan, paths, data, device, verbose)
    elif parallel == 1:
        results = [
            run_single_experiment(
                run.config,
                data.train,
                data.val,
                run.base,
                device,
                dense=run.dense,
                model_path=path,
                test_dataset=data.test,
                verbose=verbose,
                parallel=ranks,
            )  # fmt: skip
            for run, path in zip(plan, paths, strict=True)
        ]
    else:
        # spawn, not fork: CUDA cannot be used in a forked child, and a fork would copy
        # this process's threads' locks mid-use.
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=parallel,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_process,
            initargs=(base, str(device), max(1, threads // parallel), 1.0 / parallel),
        ) as pool:
            futures = [pool.submit(_run_in_process, run, path, verbose)
                       for run, path in zip(plan, paths, strict=True)]  # fmt: skip
            results = [f.result() for f in futures]  # in the plan's order, whatever finished first

    dense_runs = [r for run, r in zip(plan, results, strict=True) if run.dense]
    names = list(dict.fromkeys(run.preset for run in plan if run.preset is not None))
    runs = {
        name: [r for run, r in zip(plan, results, strict=True) if run.preset == name]
        for name in names
    }
    dense = dense_runs[0]
    first = {name: r[0] for name, r in runs.items()}
    if verbose:
        print("\n=== success criteria ===", flush=True)
    verdicts: Mapping[str, Verdict | SeedsVerdict]
    if seeds == 1:
        verdicts = evaluate_success_criteria(
            first, best_val_loss(dense["metrics"]), dense, verbose=verbose
        )
    else:
        verdicts = {name: judge_seeds(runs[name], dense_runs) for name in names}
        if verbose:
            for name, verdict in verdicts.items():
                print(format_verdict(name, verdict), flush=True)
    table = format_table(dense_runs, runs, verdicts)
    if verbose:
        print("\n" + table, flush=True)

    summary = {
        "base": base.to_dict(),
        "seeds": sorted({run.seed for run in plan}),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "precision": base.precision,
        "compile": base.compile,
        "parallel": parallel,
        "seeds_together": together,
        "threads": threads,
        "torch": torch.__version__,
        "commit": commit,
        "data": {
            "tokenizer": data.tokenizer_key,
            "vocab_size": data.tokenizer.get_vocab_size(),
            "train_tokens": data.train.num_tokens,
            "val_tokens": data.val.num_tokens,
            "test_tokens": data.test.num_tokens,
        },
        "seconds": time.perf_counter() - started,
        # The spec's keys hold the first seed's runs; `runs` holds every seed's, in order.
        "dense": dense,
        "experiments": first,
        "runs": {"dense": dense_runs, **runs},
        "verdicts": verdicts,
        "table": table,
    }
    if ranks is not None:
        summary["ranks"] = {"gpus": ranks.world_size, "expert_parallel": ranks.expert_parallel}
        if not ranks.main:
            return summary  # rank 0 writes
    write_json_atomic(out / "experiment_results.json", summary)
    if verbose:
        print(f"\nwrote {out / 'experiment_results.json'} and {out / 'dense_model.pt'}"
              f" in {summary['seconds']:.0f}s", flush=True)  # fmt: skip
    return summary
