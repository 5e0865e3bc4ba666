"""One rank of a run on several GPUs, as torchrun starts it for worker.launch:

    python -m torch.distributed.run --standalone --nproc-per-node K -m worker.ranks ID

Every rank reads the run and its data and trains its part (moe_core.parallel); rank 0
reports under the claim its worker's pool process made (MOE_RUN_OWNER): the heartbeat, each
epoch, the run's end, its log and sinks, exactly as a one-GPU run's pool process does. The
others report nothing and stop when rank 0 (or a SIGTERM) says so, at the same step.
"""

from __future__ import annotations

import argparse
import os
import sys

from store import artifacts
from store.queue import TrainingQueue
from store.settings import get_settings
from worker import launch, shutdown, training
from worker.lease import RunLease
from worker.run_log import run_log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.ranks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("experiment_id", type=int)
    args = parser.parse_args(argv)
    launch.die_with_parent()  # torchrun's end (or its pool process's) ends the rank
    from moe_core.parallel import Parallel, local_device
    from worker.celery_app import app

    settings = get_settings()
    device = local_device(settings.device)
    lease = RunLease(args.experiment_id, settings=settings, queue=TrainingQueue(app),
                     worker_name=os.environ.get("MOE_WORKER_NAME"), device=str(device),
                     owner=os.environ[launch.OWNER_ENV])  # fmt: skip
    lease.attempt = int(os.environ.get(launch.ATTEMPT_ENV, "0"))
    with shutdown.task_in_progress():  # a SIGTERM stops the run at the next step
        run = training.prepare(lease, settings=settings, worker_name=None, device=device)
        if run is None:
            return 0  # taken over before the ranks started
        parallel = Parallel.start(gpus=run.base.gpus, expert_parallel=run.base.expert_parallel,
                                  device=device)  # fmt: skip
        try:
            if parallel.main:
                with run_log(run.directory / artifacts.LOG, args.experiment_id):
                    training.attempt(lease, run, settings=settings, device=device,
                                     parallel=parallel)  # fmt: skip
            else:
                training.follow(run, settings=settings, parallel=parallel)
        finally:
            parallel.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
