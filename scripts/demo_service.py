"""Run the whole service on this machine and drive it through its HTTP API.

    .venv/bin/python scripts/demo_service.py                  # embedded: SQLite, no servers
    .venv/bin/python scripts/demo_service.py --base-preset tiny --experiments baseline top2

It starts `uvicorn api.main:app` and one `celery -A worker.celery_app worker`, submits a
study (a dense baseline plus MoE experiments), follows its runs epoch by epoch, prints the
verdict table and stops both processes. With MOE_DATABASE_URL / MOE_BROKER_URL set, the
same happens against Postgres and Redis (run `alembic upgrade head` first there).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: moe_core.criteria is importable
FINISHED = {"succeeded", "failed", "cancelled"}


def call(url: str, method: str = "GET", body: dict | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token := os.environ.get("MOE_API_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_ready(base_url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if call(f"{base_url}/readyz")["status"] == "ok":
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"the API at {base_url} did not become ready")


def start(command: list[str], log: Path) -> subprocess.Popen:
    print(f"$ {' '.join(command)}   (log: {log})")
    return subprocess.Popen(
        command, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()  # the main process only: a warm shutdown stops its children
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def print_verdict_table(base_url: str, study: dict) -> None:
    """The CLI study's comparison table, built from what the API stores and judges."""
    from moe_core.criteria import format_table, format_verdict  # torch-free

    def result(experiment_id: int) -> dict | None:
        try:
            return call(f"{base_url}/experiments/{experiment_id}/result")
        except urllib.error.HTTPError:  # 409: the run did not succeed
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
    parser.add_argument("--base-preset", default="micro", choices=["micro", "tiny", "small", "spec"])
    parser.add_argument("--experiments", nargs="+", default=["baseline", "top2"])
    parser.add_argument("--epochs", type=int, help="override the base preset's num_epochs")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    # WikiText-2 beside the checkout (as ./run finds it) when no data dir is configured.
    shared = ROOT.parent / "shared" / "data" / "wikitext-2"
    if "MOE_DATA_DIR" not in os.environ and (shared / "train.txt").is_file():
        os.environ["MOE_DATA_DIR"] = str(shared)

    logs = Path(tempfile.mkdtemp(prefix="moe-demo-"))
    base_url = f"http://127.0.0.1:{args.port}"
    python = sys.executable
    api = start(
        [python, "-m", "uvicorn", "api.main:app", "--port", str(args.port)], logs / "api.log"
    )
    worker = start(
        [python, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "gpu",
         "--concurrency", "1", "--prefetch-multiplier", "1", "--loglevel", "INFO"],
        logs / "worker.log",
    )  # fmt: skip
    try:
        wait_ready(base_url)
        base = {"num_epochs": args.epochs} if args.epochs else {}
        study = call(
            f"{base_url}/studies",
            "POST",
            {
                "name": "demo",
                "base_preset": args.base_preset,
                "base": base,
                "experiments": args.experiments,
            },
        )
        print(f"study {study['id']}: dense run {study['dense_id']} + {', '.join(args.experiments)}")
        shown: dict[int, int] = {}
        while study["status"] not in FINISHED:
            time.sleep(1)
            study = call(f"{base_url}/studies/{study['id']}")
            for member in study["members"]:
                if member["current_epoch"] > shown.get(member["id"], 0):
                    metrics = call(f"{base_url}/experiments/{member['id']}/metrics")
                    for epoch in metrics["epochs"][shown.get(member["id"], 0) :]:
                        val = epoch["val"]["ce_loss"] if epoch["val"] else float("nan")
                        print(
                            f"  {member['name']:>14} epoch {epoch['epoch']}/{member['num_epochs']}: "
                            f"train {epoch['train']['ce_loss']:.3f}  val {val:.3f}  "
                            f"{epoch['tokens_per_sec']:,.0f} tok/s"
                        )
                    shown[member["id"]] = member["current_epoch"]
        print(f"\nstudy {study['id']} {study['status']}\n")
        print_verdict_table(base_url, study)
        return 0 if study["status"] == "succeeded" else 1
    finally:
        stop(worker)
        stop(api)
        print(f"logs: {logs}")


if __name__ == "__main__":
    sys.exit(main())
