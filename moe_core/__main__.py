"""Command line: `python -m moe_core study ...` runs the spec's main(); `train` runs one experiment.

    python -m moe_core study --base tiny --out runs/study
    python -m moe_core study --base small --seeds 3 --experiments baseline top2 --out runs/small
    python -m moe_core study --base spec --device cuda --parallel 5 --base-set compile=graphs --out runs/gpu
    python -m moe_core train --preset top2 --base tiny --set dropout=0.2 --out runs/top2
    python -m moe_core train --dense --base tiny --out runs/dense
    python -m moe_core train --preset baseline --base tiny --judge-against runs/dense/result.json

WikiText-2 comes from the Hugging Face hub unless --data-dir (or MOE_DATA_DIR) names a
directory with train.txt, valid.txt and test.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .atomic import write_json_atomic
from .config import (
    BASE_PRESETS,
    EXPERIMENT_PRESETS,
    BaseConfig,
    ExperimentConfig,
    base_config,
    dense_config,
    get_experiment_configs,
)


def _parse_assignments(items: list[str], flag: str) -> dict[str, Any]:
    """key=value pairs; values are JSON when they parse (numbers, lists, objects, null)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {flag} expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _validation_message(err: ValidationError, what: str) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in err.errors()]
    return f"error: invalid {what}: " + "; ".join(parts)


def _base_from_args(args: argparse.Namespace) -> BaseConfig:
    overrides = _parse_assignments(args.base_set, "--base-set")
    if args.epochs is not None:
        overrides["num_epochs"] = args.epochs
    data_dir = args.data_dir or os.environ.get("MOE_DATA_DIR")
    if data_dir:
        overrides.setdefault("data_dir", data_dir)
    if args.cache_dir:
        overrides.setdefault("cache_dir", args.cache_dir)
    return base_config(args.base, **overrides)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base", default="tiny", choices=sorted(BASE_PRESETS), help="base preset (default: tiny)"
    )
    p.add_argument(
        "--base-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a BaseConfig field",
    )
    p.add_argument("--epochs", type=int, help="shorthand for --base-set num_epochs=N")
    p.add_argument(
        "--data-dir",
        help="directory with train.txt/valid.txt/test.txt (default: $MOE_DATA_DIR, else the hub)",
    )
    p.add_argument("--cache-dir", help="tokenizer and dataset cache (default: ~/.cache/moe_lab)")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="only the final table")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    study = sub.add_parser(
        "study", help="the spec's main(): dense baseline + experiments, with verdicts"
    )
    _add_common(study)
    study.add_argument("--experiments", nargs="+", choices=sorted(EXPERIMENT_PRESETS),
                       help="experiments to run (default: the spec's four)")  # fmt: skip
    study.add_argument("--seeds", type=int, default=1, metavar="N",
                       help="run the dense baseline and every experiment with N seeds (base seed,"
                            " +1, ...) and judge on differences paired by seed, with standard"
                            " errors (default: 1, the spec's study)")  # fmt: skip
    study.add_argument("--parallel", type=int, default=1, metavar="N",
                       help="train N runs at once, each in a process of its own (on one GPU:"
                            " each with 1/N of its memory); the results are the same as one"
                            " at a time (default: 1)")  # fmt: skip
    study.add_argument("--seeds-together", action=argparse.BooleanOptionalAction, default=None,
                       help="train each configuration's seeds as one stacked model"
                            " (moe_core.together; default: on a GPU where the stack fits)")  # fmt: skip

    sweep = sub.add_parser(
        "sweep", help="search a design space (a YAML file), each trial judged against dense"
    )
    sweep.add_argument("file", help="the sweep: moe_core.search.SweepConfig as YAML or JSON")
    sweep.add_argument("--out", required=True, help="output directory")
    sweep.add_argument("--data-dir", help="WikiText-2 as train/valid/test .txt (default: the hub)")
    sweep.add_argument("--cache-dir", help="tokenised data cache")
    sweep.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...")
    sweep.add_argument("--quiet", action="store_true", help="only the final table")
    sweep.add_argument("--seeds-together", action=argparse.BooleanOptionalAction, default=None,
                       help="train each configuration's seeds as one stacked model"
                            " (moe_core.together; default: on a GPU where the stack fits)")  # fmt: skip

    train = sub.add_parser("train", help="train one experiment (resumes from OUT/checkpoint.pt)")
    _add_common(train)
    train.add_argument("--preset", choices=sorted(EXPERIMENT_PRESETS), default="baseline")
    train.add_argument("--dense", action="store_true", help="a dense baseline instead of MoE")
    train.add_argument("--name", help="experiment name (default: the preset's)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an ExperimentConfig field",
    )
    train.add_argument(
        "--judge-against", metavar="RESULT_JSON", help="a dense run's result.json to judge against"
    )

    args = parser.parse_args(argv)
    if args.command == "sweep":
        return _sweep(args)
    try:
        base = _base_from_args(args)
    except ValidationError as err:
        print(_validation_message(err, "base config"), file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if args.command == "study":
        if args.seeds < 1:
            print(f"error: --seeds must be at least 1, got {args.seeds}", file=sys.stderr)
            return 2
        if args.parallel < 1:
            print(f"error: --parallel must be at least 1, got {args.parallel}", file=sys.stderr)
            return 2
        if args.seeds_together and (args.parallel > 1 or base.gpus > 1):
            print("error: --seeds-together trains a configuration's seeds in one process:"
                  " not with --parallel > 1 or gpus > 1", file=sys.stderr)  # fmt: skip
            return 2
        from .study import main as run_study

        ranks = _ranks(base, args.device)
        if ranks is False:
            return 2
        try:
            summary = run_study(base, args.out, experiments=args.experiments, device=args.device,
                                verbose=not args.quiet, seeds=args.seeds,
                                parallel=args.parallel, ranks=ranks or None,
                                seeds_together=args.seeds_together)  # fmt: skip
        finally:
            if ranks:
                ranks.stop()
        if args.quiet and (not ranks or ranks.main):
            print(summary["table"])
        return 0

    try:
        start = (
            dense_config(base) if args.dense else get_experiment_configs(base)[args.preset]
        ).to_dict()
        overrides = _parse_assignments(args.set, "--set")
        if args.name:
            overrides["name"] = args.name
        config = ExperimentConfig(**{**start, **overrides})
    except ValidationError as err:
        print(_validation_message(err, "experiment config"), file=sys.stderr)
        return 2

    return _train(args, base, config)


def _train(args: argparse.Namespace, base: BaseConfig, config: ExperimentConfig) -> int:
    """One experiment; under torchrun (base.gpus ranks) every rank runs this, and rank 0
    writes the files."""
    from .checkpoint import Checkpointing, newest
    from .criteria import format_verdict, judge
    from .data import build_datasets
    from .errors import TrainingCancelled
    from .hooks import TrainerHooks
    from .runner import run_single_experiment

    out = Path(args.out)
    parallel = _ranks(base, args.device)
    if parallel is False:
        return 2
    parallel = parallel or None
    try:
        # the tokenizer and dataset caches are written once, by rank 0, then read
        data = (parallel.main_first if parallel else _call)(lambda: build_datasets(base))
        # one process writes a file, several a DCP directory; either resumes from the newer
        # of the two (a run restarted on another number of ranks)
        pt, dcp = out / "checkpoint.pt", out / "checkpoint.dcp"
        checkpointing = Checkpointing(dcp if parallel else pt, resume_from=newest(pt, dcp))
        # SIGTERM (a preempted node; torchrun passes it to every rank): checkpoint at the
        # next step, every rank at the same one, and stop; run the command again to resume
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        result = run_single_experiment(
            config, data.train, data.val, base, args.device, dense=args.dense,
            checkpointing=checkpointing, model_path=out / "model.pt",
            test_dataset=data.test, verbose=not args.quiet, parallel=parallel,
            hooks=TrainerHooks(should_stop=stop.is_set),
        )  # fmt: skip
    except TrainingCancelled as stopped:
        if parallel is None or parallel.main:
            print(f"{stopped}; checkpoint in {out}: run the same command to resume",
                  file=sys.stderr)  # fmt: skip
        return 128 + signal.SIGTERM
    finally:
        if parallel is not None:
            parallel.stop()
    if parallel is not None and not parallel.main:
        return 0
    result["dense"] = args.dense
    write_json_atomic(out / "result.json", result)
    print(f"wrote {out / 'result.json'} and {out / 'model.pt'}")
    if args.judge_against:
        dense = json.loads(Path(args.judge_against).read_text())
        print(format_verdict(config.name, judge(result, dense)))
    return 0


def _ranks(base: BaseConfig, device: str | None) -> Any:
    """This process's rank in a torchrun launch of base.gpus (moe_core.parallel.Parallel);
    None on one process; False (after saying why) when the run asks for ranks it was not
    launched with."""
    from .parallel import Parallel, launched, local_device

    if base.gpus == 1 and not launched():
        return None
    if not launched():
        print(f"error: base.gpus is {base.gpus}: launch the run with torchrun, e.g. "
              f"torchrun --standalone --nproc-per-node {base.gpus} -m moe_core ...",
              file=sys.stderr)  # fmt: skip
        return False
    return Parallel.start(gpus=base.gpus, expert_parallel=base.expert_parallel,
                          device=local_device(device))  # fmt: skip


def _call(make: Callable[[], Any]) -> Any:
    return make()  # what Parallel.main_first does, on one process


def _sweep(args: argparse.Namespace) -> int:
    import yaml

    from .search import SweepConfig
    from .sweep import SweepRefused, run_sweep

    try:
        text = Path(args.file).read_text()
    except OSError as err:
        print(f"error: {args.file}: {err.strerror}", file=sys.stderr)
        return 2
    try:
        sweep = SweepConfig.model_validate(yaml.safe_load(text) or {})
    except yaml.YAMLError as err:
        print(f"error: {args.file} is not YAML: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        print(_validation_message(err, "sweep"), file=sys.stderr)
        return 2
    try:
        report = run_sweep(sweep, args.out, data_dir=args.data_dir, cache_dir=args.cache_dir,
                           device=args.device, verbose=not args.quiet,
                           seeds_together=args.seeds_together)  # fmt: skip
    except SweepRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.quiet:
        from .sweep import format_ranking

        print(format_ranking(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
