"""Files written whole or not at all, and a failure that says which file and why: no room
(checked before writing), a read-only directory, a disk that fills mid-write."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from moe_core import atomic
from moe_core.atomic import StorageError, torch_save_atomic, write_json_atomic
from moe_core.checkpoint import Checkpointing
from moe_core.config import get_experiment_configs
from moe_core.hooks import TrainerHooks
from moe_core.runner import run_single_experiment

Usage = namedtuple("Usage", "total used free")
MB = 1 << 20


def full_disk(monkeypatch, free: int) -> None:
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: Usage(1 << 40, 0, free))


def test_no_room_is_said_before_a_byte_is_written(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    torch_save_atomic(path, {"w": torch.zeros(10)})
    before = path.read_bytes()
    full_disk(monkeypatch, free=2 * MB + 5)
    with pytest.raises(StorageError) as raised:
        torch_save_atomic(path, {"w": torch.zeros(1 << 20)})  # 4 MB of float32
    assert str(raised.value) == f"no space left on {tmp_path}: need 5 MB, have 2 MB"
    assert raised.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.pt"]
    with pytest.raises(StorageError, match="no space left on"):
        write_json_atomic(tmp_path / "result.json", {"x": "y" * 3 * MB})


def test_a_disk_full_mid_write_is_the_file_systems_error_with_the_path(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"

    class Full:
        def __init__(self, tmp):
            self.file = open(tmp, "wb")  # noqa: SIM115

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(atomic, "_create", Full)
    with pytest.raises(StorageError) as raised:
        torch_save_atomic(path, {"w": torch.zeros(100)})
    assert str(raised.value) == f"cannot write {path}: No space left on device (ENOSPC)"
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(path))
    assert os.listdir(tmp_path) == []  # no temporary file left behind


def test_a_read_only_directory_is_named_with_its_errno():
    # under a directory anyone may pass through (pytest's own is its user's alone)
    home = Path(tempfile.mkdtemp(prefix="read-only-"))
    home.chmod(0o755)
    directory = home / "run"
    directory.mkdir()
    directory.chmod(0o555)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child, so that root can give up the rights that ignore the mode
        try:
            os.close(read)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)  # nobody
            try:
                torch_save_atomic(directory / "checkpoint.pt", {"w": torch.zeros(10)})
                message = "written"
            except StorageError as exc:
                message = f"{exc.errno} {exc}"
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        message = answer.read()
    os.waitpid(pid, 0)
    directory.chmod(0o755)
    shutil.rmtree(home)
    code, text = message.split(" ", 1)
    assert int(code) in (errno.EACCES, errno.EPERM, errno.EROFS), message
    assert text == (
        f"cannot write {directory / 'checkpoint.pt'}: {os.strerror(int(code))} "
        f"({errno.errorcode[int(code)]})"
    )


def test_a_run_without_room_for_its_files_stops_before_its_first_step(
    micro_base, micro_data, tmp_path, monkeypatch
):
    full_disk(monkeypatch, free=MB)
    config = get_experiment_configs(micro_base)["baseline"]
    with pytest.raises(StorageError) as raised:
        run_single_experiment(
            config,
            micro_data.train,
            micro_data.val,
            micro_base,
            "cpu",
            checkpointing=Checkpointing(tmp_path / "run" / "checkpoint.pt"),
            model_path=tmp_path / "run" / "model.pt",
            hooks=TrainerHooks(
                on_epoch_end=lambda record: pytest.fail("trained without room for its files")
            ),
            verbose=False,
        )
    assert str(raised.value).startswith(f"no space left on {tmp_path / 'run'}: need ")
    assert str(raised.value).endswith(" MB, have 1 MB")
    assert os.listdir(tmp_path / "run") == []
