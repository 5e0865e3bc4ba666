"""python -m benchmarks {all,moe_layer,model_step,trainer_overhead,data,service,recovery,gpu,
distributed} [options]; `python -m benchmarks gpu --device cuda` writes
results/gpu-<GPU name>.json, `python -m benchmarks distributed` results/distributed-cpu.json
(on a machine with a GPU, distributed-<GPU name>.json)"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .suite import RESULTS_DIR, SECTIONS, run_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("sections", nargs="*", default=["all"],
                        help=f"'all' or some of: {', '.join(SECTIONS)}")  # fmt: skip
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one repeat: checks the suite runs, not the figures")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per figure")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA (default bf16)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results JSON (default {RESULTS_DIR}/latest.json for a full "
                        "'all' run, else a timestamped file there)")  # fmt: skip
    parser.add_argument("--parts", nargs="+", default=None, metavar="PART",
                        help="gpu section: some of step, big, slots, study_engine, "
                        "study_service (default: all)")  # fmt: skip
    parser.add_argument("--modes", nargs="+", default=None, metavar="MODE",
                        help="gpu section's step part: some of fp32, bf16, bf16+graphs "
                        "(default: all)")  # fmt: skip
    parser.add_argument("--data-dir", default=None,
                        help="WikiText-2 for the runs of the gpu section (default: "
                        "$MOE_DATA_DIR, else ../shared/data/wikitext-2)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.data_dir:
        os.environ["MOE_DATA_DIR"] = str(Path(args.data_dir).resolve())
    if args.parts:
        from .gpu import PARTS

        unknown = sorted(set(args.parts) - set(PARTS))
        if unknown:
            parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    if args.modes:
        from .gpu import MODES

        unknown = sorted(set(args.modes) - set(MODES))
        if unknown:
            parser.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    names = list(SECTIONS) if args.sections in (["all"], []) else args.sections
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from all, {', '.join(SECTIONS)}")
    results = run_suite(
        names,
        device=args.device,
        smoke=args.smoke,
        repeats=args.repeats,
        threads=args.threads,
        compile=args.compile,
        amp=not args.no_amp,
        out=args.out,
        options={"gpu_parts": args.parts, "gpu_modes": args.modes},
    )
    return 1 if any("error" in s for s in results["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
