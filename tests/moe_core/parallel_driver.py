"""Run under torchrun by tests/moe_core/test_parallel.py: trains each configuration it is
given on the launch's ranks, one after another in one launch (a process group started
once), and rank 0 writes their results to OUT/<name>.json.

    torchrun --standalone --nproc-per-node N tests/moe_core/parallel_driver.py SPEC.json

SPEC: {"out", "base": {BaseConfig fields over micro}, "runs": {name: {"preset" | "dense",
"set": {ExperimentConfig fields}}}}."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from moe_core.config import base_config, dense_config, get_experiment_configs
from moe_core.data import build_datasets
from moe_core.parallel import Parallel, local_device
from moe_core.runner import run_single_experiment


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    base = base_config("micro", **spec["base"])
    ranks = Parallel.start(gpus=base.gpus, expert_parallel=base.expert_parallel,
                           device=local_device("cpu"))  # fmt: skip
    try:
        data = ranks.main_first(lambda: build_datasets(base))
        for name, run in spec["runs"].items():
            dense = run.get("dense", False)
            start = dense_config(base) if dense else get_experiment_configs(base)[run["preset"]]
            config = start.model_copy(update=run.get("set", {}))
            result = run_single_experiment(config, data.train, data.val, base, None,
                                           dense=dense, verbose=False, parallel=ranks)  # fmt: skip
            if ranks.main:
                Path(spec["out"], f"{name}.json").write_text(json.dumps(result))
    finally:
        ranks.stop()


if __name__ == "__main__":
    main(sys.argv[1])
