"""python -m benchmarks {all,moe_layer,model_step,trainer_overhead,data,service} [options]"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)
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
    )
    return 1 if any("error" in s for s in results["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
