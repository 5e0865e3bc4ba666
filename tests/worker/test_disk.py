"""A run whose disk fills up fails with a message that says so (the path, what it needed and
had, or the errno), not torch's internals, and what it leaves is listed as partial and never
served as its final model or result. The attempt runs in-process (worker.training), the
disk is full by monkeypatch: shutil.disk_usage for the free-space checks, the file the
checkpoint is written to for a disk that fills mid-write."""

from __future__ import annotations

import errno
import os
from collections import namedtuple

import pytest
import torch

from moe_core import atomic
from store import artifacts
from store.queue import TrainingQueue
from tests.client import make_client
from tests.factories import new_experiment, run_row
from worker.training import run_experiment

pytestmark = pytest.mark.services

Usage = namedtuple("Usage", "total used free")
GB = 1 << 30


def _attempt(settings, experiment_id: int) -> None:
    run_experiment(experiment_id, settings=settings, queue=TrainingQueue.for_settings(settings))


def test_a_disk_that_fills_after_the_first_epoch_fails_the_run_clearly(deployment, monkeypatch):
    settings = deployment()
    experiment_id = new_experiment(settings.database_url, "full-disk")
    directory = artifacts.run_dir(settings, run_row(settings.database_url, experiment_id).run_key)
    checkpoint = directory / artifacts.CHECKPOINT
    real = atomic.shutil.disk_usage

    def usage(path):
        # room until the first checkpoint is down, then 100 KiB: the next one does not fit
        if str(path).startswith(str(settings.artifact_dir)) and checkpoint.exists():
            return Usage(GB, GB - (100 << 10), 100 << 10)
        return real(path)

    monkeypatch.setattr(atomic.shutil, "disk_usage", usage)
    _attempt(settings, experiment_id)

    run = run_row(settings.database_url, experiment_id)
    # epoch 2 was trained and recorded; its checkpoint found no room
    assert run.status == "failed" and run.current_epoch == 2
    assert run.error.startswith(f"StorageError: no space left on {directory}: need ")
    assert run.error.endswith(" MB, have 0 MB")
    assert not [name for name in os.listdir(directory) if ".tmp" in name]  # nothing half-written
    # epoch 1's checkpoint, whole, is still there
    assert torch.load(checkpoint, weights_only=False)["history"]["epoch"] == 1

    with make_client(settings) as api:
        listed = api.get(f"/experiments/{experiment_id}/artifacts").json()["items"]
        assert {a["name"]: a["partial"] for a in listed} == {"checkpoint.pt": True, "run.log": True}
        kept = api.get(f"/experiments/{experiment_id}/artifacts/checkpoint.pt")
        assert kept.status_code == 200 and kept.headers["x-artifact-partial"] == "true"
        assert api.get(f"/experiments/{experiment_id}/artifacts/model.pt").status_code == 409
        assert api.get(f"/experiments/{experiment_id}/artifacts/result.json").status_code == 409
        assert api.get(f"/experiments/{experiment_id}/result").status_code == 409
        log = api.get(f"/experiments/{experiment_id}/logs").text
        assert "no space left on" in log


def test_a_disk_full_mid_write_names_the_file_and_the_errno(deployment, monkeypatch):
    settings = deployment()
    experiment_id = new_experiment(settings.database_url, "enospc")
    directory = artifacts.run_dir(settings, run_row(settings.database_url, experiment_id).run_key)
    real = atomic._create

    class FillingUp:
        """A file on a disk that has 4 KiB left (the free-space check was passed: someone
        else filled it since)."""

        def __init__(self, path):
            self.file, self.left = real(path), 4096

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= len(data)
            return self.file.write(data)

        def flush(self):
            self.file.flush()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(atomic, "_create", FillingUp)
    _attempt(settings, experiment_id)

    run = run_row(settings.database_url, experiment_id)
    assert run.status == "failed"
    assert run.error == (
        f"StorageError: cannot write {directory / artifacts.CHECKPOINT}: No space left on "
        "device (ENOSPC)"
    )
    assert "unexpected pos" not in run.error and "enforce fail" not in run.error
    assert os.listdir(directory) == [artifacts.LOG]
