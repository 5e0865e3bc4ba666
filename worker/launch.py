"""A run on several GPUs: the pool process that claimed it starts its ranks with torchrun
(`torch.distributed.run --standalone`, one process per GPU slot it holds) and waits.

Rank 0 (worker.ranks) reports under this process's claim: it heartbeats, writes each
epoch and ends the run, as a one-GPU run's pool process does. Meanwhile this process
heartbeats too (the ranks take seconds to start) and watches three things:
- a SIGTERM (the worker is stopping): passed to torchrun, which passes it to every rank;
  they checkpoint at the same step and rank 0 hands the run back;
- the lease ending under the ranks (rank 0 ended the run, or it was taken over, when rank
  0's lease stops every rank): ranks still there after a grace period are stopped;
- torchrun's exit: when the ranks died (a rank killed, out of memory) and rank 0 did not
  end the run, it goes back to the queue as a restart (MOE_MAX_RESTARTS bounds them, as
  for a worker that dies) and resumes from its last DCP checkpoint. With MOE_RANK_RESTARTS
  torchrun first restarts the ranks in place, from the same checkpoint.
The ranks die with this process (and torchrun with them): a pool process killed takes its
ranks along, so a run taken over is never trained twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from store.settings import Settings
from worker import shutdown

if TYPE_CHECKING:
    from worker.lease import RunLease
    from worker.training import Prepared

log = logging.getLogger(__name__)

OWNER_ENV = "MOE_RUN_OWNER"  # the claim rank 0 reports under
ATTEMPT_ENV = "MOE_RUN_ATTEMPT"
POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 60.0  # ranks that outstay their lease: SIGTERM, then SIGKILL


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux's PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def command(experiment_id: int, *, ranks: int, settings: Settings) -> list[str]:
    """torchrun for the run's ranks on this host: a rendezvous of its own on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(ranks), "--max-restarts", str(settings.rank_restarts),
            "-m", "worker.ranks", str(experiment_id)]  # fmt: skip


def visible_devices(slots: list[int]) -> str:
    """CUDA_VISIBLE_DEVICES for the slots held: slot i is the i-th GPU this worker sees,
    which under worker.gpu_slot (or a scheduler) is itself a subset of the host's."""
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [n for n in seen.split(",") if n.strip()] if seen else None
    return ",".join(names[i] if names else str(i) for i in slots)


def train_on_ranks(
    lease: RunLease, run: Prepared, *, gpus: list[int], settings: Settings,
    worker_name: str | None,
) -> None:  # fmt: skip
    """Train the claimed run on len(`gpus`) ranks and settle how it ended."""
    env = dict(os.environ, **{OWNER_ENV: lease.owner, ATTEMPT_ENV: str(lease.attempt)})
    if worker_name:
        env["MOE_WORKER_NAME"] = worker_name
    if lease.device.startswith("cuda"):
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(gpus)
    argv = command(lease.experiment_id, ranks=len(gpus), settings=settings)
    log.info("experiment %s: %s ranks on slots %s: %s", lease.experiment_id, len(gpus), gpus,
             " ".join(argv))  # fmt: skip
    process = subprocess.Popen(argv, env=env, preexec_fn=die_with_parent)
    forwarded, stopping, lost_at = False, False, None
    with lease:  # heartbeats while the ranks start (rank 0 heartbeats once it runs)
        while process.poll() is None:
            if shutdown.requested() and not forwarded:
                process.send_signal(signal.SIGTERM)  # torchrun passes it to every rank
                forwarded = True
            # Not ours any more (ended by rank 0, or taken over: then rank 0's own lease
            # stops every rank at the next step). Ranks that outstay that are stopped.
            if lease.lost() and lost_at is None:
                lost_at = time.monotonic()
            if lost_at is not None and time.monotonic() - lost_at > STOP_GRACE_SECONDS:
                if not stopping:
                    log.warning("%r: ranks still running after the lease ended; stopping "
                                "them", lease)  # fmt: skip
                    process.send_signal(signal.SIGTERM)
                    stopping = True
                elif time.monotonic() - lost_at > 2 * STOP_GRACE_SECONDS:
                    process.kill()
            time.sleep(POLL_SECONDS)
    settle(lease, process.returncode, settings=settings)


def settle(lease: RunLease, returncode: int, *, settings: Settings) -> None:
    """After torchrun: the run rank 0 left held was not ended by it (its ranks died, or were
    stopped before it could): back to the queue, a restart unless the worker is stopping."""
    from store import leases
    from store.db import session_scope
    from store.models import Experiment, Status

    with session_scope(settings.database_url) as session:
        state = leases.lease_state(
            session=session, experiment_id=lease.experiment_id, owner=lease.owner
        )
        experiment = session.get(Experiment, lease.experiment_id)
        assert experiment is not None, "a running run is never deleted"
        restarts = experiment.restarts
    if state is leases.LeaseState.lost:
        return  # ended by rank 0 (finished, failed, cancelled, handed back) or taken over
    if state is leases.LeaseState.cancel_requested:
        lease.finish(Status.cancelled)
        return
    if shutdown.requested():
        lease.hand_back("stopping (its ranks ended before handing it back)")
        return
    where = f"its ranks exited with status {returncode} (torchrun)"
    if restarts >= settings.max_restarts:
        lease.finish(Status.failed, error=(
            f"gave up: {where}, and it was restarted {restarts} times, the limit "
            f"(MOE_MAX_RESTARTS={settings.max_restarts}); the worker's log has the ranks' "
            "errors"))  # fmt: skip
        return
    log.warning("experiment %s: %s; it resumes from its last checkpoint", lease.experiment_id,
                where)  # fmt: skip
    lease.hand_back(where, restart=True)
