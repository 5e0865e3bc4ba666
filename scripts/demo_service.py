"""Run the whole service on this machine and drive it through its HTTP API.

    .venv/bin/python scripts/demo_service.py                  # embedded: SQLite, no servers
    .venv/bin/python scripts/demo_service.py --base-preset tiny --experiments baseline top2

It starts `uvicorn api.main:app` and one `celery -A worker.celery_app worker` (through
local_deployment, as the tests and benchmarks start them), submits a study (a dense
baseline plus MoE experiments) through the Python client (moe_lab.client, what the
`moe-lab` CLI uses), follows each run on its event stream as `moe-lab submit --wait`
does, prints the verdict table and stops both processes. With MOE_DATABASE_URL /
MOE_BROKER_URL set, the same happens against Postgres and Redis (run `alembic upgrade head`
first there).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: moe_lab, moe_core importable

from local_deployment.processes import StartedProcesses  # noqa: E402
from moe_lab import render  # noqa: E402
from moe_lab.client import ApiError, Client  # noqa: E402
from moe_lab.follow import Follower  # noqa: E402
from store.settings import Settings  # noqa: E402


def wait_ready(api: Client, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if api.ready()["status"] == "ok":
                return
        except ApiError:  # not listening yet, or a 503 while it starts
            pass
        time.sleep(0.5)
    raise SystemExit(f"the API at {api.base_url} did not become ready")


def print_verdict_table(api: Client, study: dict) -> None:
    """The CLI study's comparison table, built from what the API stores and judges."""
    from moe_core.criteria import format_table, format_verdict  # torch-free

    def result(experiment_id: int) -> dict | None:
        try:
            return api.result(experiment_id)
        except ApiError as error:  # 409: the run did not succeed
            if error.status != 409:
                raise
            return None

    dense = result(study["dense_id"])
    rows = {row["name"]: row for row in study["verdicts"]}
    results = {name: result(row["experiment_id"]) for name, row in rows.items()}
    judged = {
        name: rows[name]["verdict"] for name, r in results.items() if r and rows[name]["verdict"]
    }
    for name, row in rows.items():
        print(
            format_verdict(name, row["verdict"]) if row["verdict"] else f"  {name}: {row['detail']}"
        )
    if dense is not None:
        print("\n" + format_table(dense, {n: results[n] for n in judged}, judged))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base-preset", default="micro", choices=["micro", "tiny", "small", "spec"]
    )
    parser.add_argument("--experiments", nargs="+", default=["baseline", "top2"])
    parser.add_argument("--epochs", type=int, help="override the base preset's num_epochs")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    # WikiText-2 beside the checkout (as ./run finds it) when no data dir is configured.
    shared = ROOT.parent / "shared" / "data" / "wikitext-2"
    if "MOE_DATA_DIR" not in os.environ and (shared / "train.txt").is_file():
        os.environ["MOE_DATA_DIR"] = str(shared)

    settings = Settings()  # this shell's MOE_ variables: the embedded default unless set
    logs = Path(tempfile.mkdtemp(prefix="moe-demo-"))
    with StartedProcesses(logs, tails=False) as started:
        # The worker imports torch meanwhile; a study submitted first waits in the queue.
        # Torch's own thread count: the demo trains as a deployed worker does.
        worker = started.worker(settings, "demo", wait=False, threads=None)
        try:
            server = started.api(settings, port=args.port)
            print(f"API at {server.url}, worker {worker.name} (logs: {logs})")
            return run_study(Client(server.url), args)
        except (ApiError, RuntimeError) as error:  # RuntimeError: a process did not start
            print(f"error: {error}", file=sys.stderr)
            return 1
        finally:
            worker.shutdown(timeout=30)  # warm: its run handed back, as at scale-in


def run_study(api: Client, args: argparse.Namespace) -> int:
    """Submit the study, follow each run to its end, print the verdicts; the exit code."""
    wait_ready(api)
    base = {"num_epochs": args.epochs} if args.epochs else {}
    study = api.create_study(
        {
            "name": "demo",
            "base_preset": args.base_preset,
            "base": base,
            "experiments": args.experiments,
        }
    )
    print(f"study {study['id']}: dense run {study['dense_id']} + {', '.join(args.experiments)}")
    # One worker trains the members in turn, dense first: follow each to its end.
    console = render.console()
    follower = Follower(api, console)
    for member in sorted(study["members"], key=lambda m: m["id"]):
        console.rule(f"{member['name']} (experiment {member['id']})")
        follower.follow(api.experiment(member["id"]), show_verdict=False)
    study = api.study(study["id"])
    print(f"\nstudy {study['id']} {study['status']}\n")
    print_verdict_table(api, study)
    return 0 if study["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
