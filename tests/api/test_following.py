"""Following a run and keeping house: the event stream, progress, logs, artifacts, tags,
list filters and ordering, delete. The worker's writes are made here through store.leases, as
a worker makes them (tests/worker/test_worker_e2e.py has a real one)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from store import artifacts, leases
from store.db import session_scope
from tests.client import submit
from tests.factories import claim, record, result, run_row, succeed, write

pytestmark = pytest.mark.services


@pytest.fixture()
def settings(deployment):
    # A database of the test's own: lists and counts see only its runs.
    return deployment(event_poll_seconds=0.05)


def events(client, experiment_id: int, **headers) -> list[tuple[str, str, dict]]:
    """Read the stream to its end: (event, id, data) each."""
    out, event, event_id = [], None, None
    with client.stream("GET", f"/experiments/{experiment_id}/events", headers=headers) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("id:"):
                event_id = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                out.append((event, event_id, json.loads(line.split(":", 1)[1])))
    return out


def heartbeat(database: str, experiment_id: int, owner: str, **progress) -> None:
    row = {"phase": "training", "epoch": 1, "step": 3, "steps_per_epoch": 8,
           "tokens_per_sec": 1234.5, "eta_seconds": 42.0, "updated_at": "2026-11-25T12:00:00+00:00",
           **progress}  # fmt: skip
    with session_scope(database) as session:
        assert leases.heartbeat(session=session, experiment_id=experiment_id, owner=owner,
                              progress=row)  # fmt: skip


def test_the_event_stream_follows_a_run_to_its_end_and_resumes(client, settings):
    database = settings.database_url
    run = submit(client)
    claim(database, run["id"], "w")

    def worker() -> None:  # what a worker writes, paced so the stream sees each state
        time.sleep(0.3)
        heartbeat(database, run["id"], "w", step=3)
        time.sleep(0.3)
        write(database, run["id"], "w", record(1, 3.0))
        heartbeat(database, run["id"], "w", epoch=2, step=1)
        time.sleep(0.3)
        write(database, run["id"], "w", record(2, 2.5))
        with session_scope(database) as session:
            leases.finish_experiment(session=session, experiment_id=run["id"], owner="w",
                                   status="succeeded", result=result(2.5))  # fmt: skip

    thread = threading.Thread(target=worker)
    thread.start()
    seen = events(client, run["id"])
    thread.join()

    kinds = [event for event, _, _ in seen]
    assert kinds[0] == "status" and seen[0][2]["status"] == "running"
    assert kinds[-1] == "status" and seen[-1][2]["status"] == "succeeded"
    assert [data["epoch"] for event, _, data in seen if event == "epoch"] == [1, 2]
    progress = [data for event, _, data in seen if event == "progress"]
    assert progress[0]["step"] == 3 and progress[0]["eta_seconds"] == 42.0
    # An epoch event is the same object as /metrics serves.
    metrics = client.get(f"/experiments/{run['id']}/metrics").json()["epochs"]
    assert [data for event, _, data in seen if event == "epoch"] == metrics
    # Ids are the last epoch delivered; resuming after epoch 1 gives epoch 2 and the end.
    assert [event_id for _, event_id, _ in seen][-1] == "2"
    resumed = events(client, run["id"], **{"Last-Event-ID": "1"})
    assert [(e, d.get("epoch", d.get("status"))) for e, _, d in resumed] == [
        ("epoch", 2),
        ("status", "succeeded"),
    ]
    assert client.get("/experiments/999999/events").status_code == 404


def test_progress_shows_while_running_only(client, settings):
    run = submit(client)
    assert client.get(f"/experiments/{run['id']}").json()["progress"] is None
    claim(settings.database_url, run["id"], "w")
    heartbeat(settings.database_url, run["id"], "w", phase="evaluating", step=8)
    shown = client.get(f"/experiments/{run['id']}").json()["progress"]
    assert shown["phase"] == "evaluating" and shown["step"] == 8
    assert shown["steps_per_epoch"] == 8 and shown["tokens_per_sec"] == 1234.5
    with session_scope(settings.database_url) as session:
        leases.finish_experiment(session=session, experiment_id=run["id"], owner="w",
                               status="failed", error="boom")  # fmt: skip
    assert client.get(f"/experiments/{run['id']}").json()["progress"] is None


def test_logs_are_served_from_an_offset(client, settings):
    run = submit(client)
    assert client.get(f"/experiments/{run['id']}/logs").text == ""
    directory = artifacts.run_dir(settings, run["run_key"])
    directory.mkdir(parents=True)
    (directory / artifacts.LOG).write_text("line one\nline two\n")
    first = client.get(f"/experiments/{run['id']}/logs")
    assert first.text == "line one\nline two\n"
    assert first.headers["X-Log-Offset"] == str(len("line one\nline two\n"))
    with (directory / artifacts.LOG).open("a") as log:
        log.write("line three\n")
    more = client.get(
        f"/experiments/{run['id']}/logs", params={"offset": first.headers["X-Log-Offset"]}
    )
    assert more.text == "line three\n"
    assert client.get("/experiments/999999/logs").status_code == 404


def test_artifacts_list_and_download_and_delete_removes_everything(client, settings):
    run = submit(client, tags=["keep"])
    directory = artifacts.run_dir(settings, run["run_key"])
    directory.mkdir(parents=True)
    (directory / artifacts.MODEL).write_bytes(b"weights")
    (directory / artifacts.RESULT).write_text('{"params": 1}')
    (directory / "stray.tmp").write_text("not listed")
    listed = client.get(f"/experiments/{run['id']}/artifacts").json()["items"]
    assert [(a["name"], a["size"]) for a in listed] == [("model.pt", 7), ("result.json", 13)]
    # not succeeded: whatever lies there is partial, and never served as the final model
    assert all(a["partial"] for a in listed)
    assert client.get(f"/experiments/{run['id']}/artifacts/model.pt").status_code == 409
    assert client.get(f"/experiments/{run['id']}/artifacts/result.json").status_code == 409
    assert client.get(f"/experiments/{run['id']}/artifacts/checkpoint.pt").status_code == 404
    assert client.get(f"/experiments/{run['id']}/artifacts/..%2Fetc").status_code in (404, 422)

    # Not while it may still be written to.
    assert client.delete(f"/experiments/{run['id']}").status_code == 409
    assert client.post(f"/experiments/{run['id']}/cancel").json()["status"] == "cancelled"
    assert client.delete(f"/experiments/{run['id']}").status_code == 204
    assert client.get(f"/experiments/{run['id']}").status_code == 404
    assert not directory.exists()
    assert client.delete(f"/experiments/{run['id']}").status_code == 404


def test_a_succeeded_runs_files_are_final_and_served(client, settings):
    run = submit(client)
    directory = artifacts.run_dir(settings, run["run_key"])
    directory.mkdir(parents=True)
    (directory / artifacts.MODEL).write_bytes(b"weights")
    (directory / artifacts.CHECKPOINT).write_bytes(b"state")
    succeed(settings.database_url, run["id"], result(3.0))
    listed = client.get(f"/experiments/{run['id']}/artifacts").json()["items"]
    assert [(a["name"], a["partial"]) for a in listed] == [
        ("model.pt", False),
        ("checkpoint.pt", False),
    ]
    download = client.get(f"/experiments/{run['id']}/artifacts/model.pt")
    assert download.content == b"weights"
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-length"] == "7"
    assert download.headers["x-artifact-partial"] == "false"
    assert "experiment-" in download.headers["content-disposition"]


def test_deleting_a_study_takes_its_runs_and_files(client, settings):
    study = client.post("/studies", json={"name": "s", "base_preset": "micro",
                                       "experiments": ["top2"]}).json()  # fmt: skip
    dense_id, moe_id = (m["id"] for m in study["members"])
    # A member alone cannot go: the study would lose its baseline or a run.
    assert client.delete(f"/experiments/{dense_id}").status_code == 409
    assert client.delete(f"/studies/{study['id']}").status_code == 409  # queued members
    succeed(settings.database_url, dense_id, result(3.0, dense=True))
    succeed(settings.database_url, moe_id, result(2.9))
    dense_dir = artifacts.run_dir(settings, run_row(settings.database_url, dense_id).run_key)
    dense_dir.mkdir(parents=True)
    (dense_dir / artifacts.MODEL).write_bytes(b"dense weights")
    names = [a["name"] for a in client.get(f"/studies/{study['id']}/artifacts").json()["items"]]
    assert names == ["dense_model.pt", "experiment_results.json"]
    assert (
        client.get(f"/studies/{study['id']}/artifacts/dense_model.pt").content == b"dense weights"
    )
    summary = client.get(f"/studies/{study['id']}/artifacts/experiment_results.json").json()
    assert summary["dense"]["params"] == 1000 and summary["experiments"]["top2"] is not None
    assert summary["verdicts"]["top2"]["passed"] in (True, False)

    assert client.delete(f"/studies/{study['id']}").status_code == 204
    assert client.get(f"/experiments/{dense_id}").status_code == 404
    assert client.get(f"/experiments/{moe_id}").status_code == 404
    assert not dense_dir.exists()


def test_tags_filters_and_ordering(client, settings):
    database = settings.database_url
    a = submit(client, "alpha-top2", preset="top2", tags=["sweep", "lr:3e-4"])
    b = submit(client, "beta-baseline", preset="baseline", tags=["sweep"])
    dense = submit(client, "Dense", dense=True)
    assert a["tags"] == ["sweep", "lr:3e-4"]
    succeed(database, a["id"], result(2.8))
    succeed(database, b["id"], result(2.6))

    def ids(**params) -> list[int]:
        response = client.get("/experiments", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == len(body["items"])
        return [item["id"] for item in body["items"]]

    assert ids() == [dense["id"], b["id"], a["id"]]  # newest first
    assert ids(tag="sweep") == [b["id"], a["id"]]
    assert ids(tag="lr:3e-4") == [a["id"]]
    assert ids(tag="swee") == []  # a tag matches whole
    assert ids(name="TOP2") == [a["id"]]  # part of the name, any case
    assert ids(name="_") == []  # no LIKE wildcards from the query
    assert ids(preset="baseline") == [b["id"]]
    assert ids(dense="true") == [dense["id"]]
    assert ids(dense="false") == [b["id"], a["id"]]
    assert ids(status="succeeded") == [b["id"], a["id"]]
    # Lowest validation CE first; runs without one last.
    assert ids(order="val_ce") == [b["id"], a["id"], dense["id"]]
    bad = client.post("/experiments", json={"name": "x", "base_preset": "micro",
                                         "tags": ["has space"]})  # fmt: skip
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][:2] == ["body", "tags"]
    repeated = client.post("/experiments", json={"name": "x", "base_preset": "micro",
                                              "tags": ["a", "a"]})  # fmt: skip
    assert repeated.status_code == 422


def test_files_are_never_served_through_a_symlink(client, settings, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    run = submit(client)
    succeed(settings.database_url, run["id"], result(3.0))
    directory = artifacts.run_dir(settings, run["run_key"])
    directory.mkdir(parents=True)
    (directory / artifacts.LOG).symlink_to(secret)
    (directory / artifacts.MODEL).symlink_to(secret)
    os.mkfifo(directory / artifacts.RESULT)  # nor a FIFO, which would hang a reader
    (directory / artifacts.CHECKPOINT).write_bytes(b"state")
    base = f"/experiments/{run['id']}"
    assert [a["name"] for a in client.get(f"{base}/artifacts").json()["items"]] == ["checkpoint.pt"]
    for name in (artifacts.LOG, artifacts.MODEL, artifacts.RESULT):
        response = client.get(f"{base}/artifacts/{name}")
        assert response.status_code == 404 and "root:" not in response.text, name
    logs = client.get(f"{base}/logs")
    assert logs.status_code == 200 and logs.text == ""
    assert client.get(f"{base}/artifacts/checkpoint.pt").content == b"state"

    # nor through a run directory that is itself a link out of the store
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / artifacts.MODEL).write_bytes(b"not this run's")
    (other / artifacts.LOG).write_text("not this run's either\n")
    for name in os.listdir(directory):
        (directory / name).unlink()
    directory.rmdir()
    directory.symlink_to(other, target_is_directory=True)
    assert client.get(f"{base}/artifacts").json()["items"] == []
    assert client.get(f"{base}/artifacts/model.pt").status_code == 404
    assert client.get(f"{base}/logs").text == ""


def test_tensorboard_event_files_are_listed_and_never_served_through_a_symlink(
    client, settings, tmp_path
):
    run = submit(client)
    succeed(settings.database_url, run["id"], result(3.0))
    folder = artifacts.run_dir(settings, run["run_key"]) / artifacts.TENSORBOARD
    folder.mkdir(parents=True)
    event = "events.out.tfevents.1796399695.vm.2690.1"
    (folder / event).write_bytes(b"event records")
    (folder / "notes.txt").write_text("not an event file\n")
    (folder / "events.out.tfevents.1.vm.1.1").symlink_to(folder / event)
    base = f"/experiments/{run['id']}/artifacts"
    listed = [a["name"] for a in client.get(base).json()["items"]]
    assert listed == [f"tensorboard/{event}"]
    served = client.get(f"{base}/tensorboard/{event}")
    assert served.status_code == 200 and served.content == b"event records"
    assert served.headers["x-artifact-partial"] == "false"
    assert client.get(f"{base}/tensorboard/events.out.tfevents.1.vm.1.1").status_code == 404
    assert client.get(f"{base}/tensorboard/notes.txt").status_code == 422  # only event files

    # nor from a tensorboard/ that is a link out of the store
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / event).write_bytes(b"not this run's")
    for name in os.listdir(folder):
        (folder / name).unlink()
    folder.rmdir()
    folder.symlink_to(other, target_is_directory=True)
    assert client.get(base).json()["items"] == []
    assert client.get(f"{base}/tensorboard/{event}").status_code == 404
