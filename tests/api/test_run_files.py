"""A run's files are served only as the plain files the worker wrote: something else planted
at a run file's path in the artifact store (a directory, a socket, a hard link to a file
elsewhere) is a 404, never a 500, never served, and never costs the API a file descriptor.
tests/api/test_following.py has the symlinks and FIFOs."""

from __future__ import annotations

import os
import socket

import pytest

from store import artifacts
from tests.client import submit
from tests.factories import result, run_row, succeed

pytestmark = pytest.mark.services

EVENT = "events.out.tfevents.1796399695.vm.2690.1"


@pytest.fixture()
def settings(deployment):
    return deployment()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def succeeded_run(client, settings) -> tuple[dict, os.PathLike]:
    run = submit(client)
    succeed(settings.database_url, run["id"], result(3.0))
    directory = artifacts.run_dir(settings, run["run_key"])
    (directory / artifacts.TENSORBOARD).mkdir(parents=True)
    return run, directory


def test_a_directory_planted_as_a_run_file_is_a_404_and_leaks_no_descriptor(client, settings):
    run, directory = succeeded_run(client, settings)
    for name in (artifacts.MODEL, artifacts.CHECKPOINT, artifacts.RESULT, artifacts.LOG):
        (directory / name).mkdir()
    (directory / artifacts.TENSORBOARD / EVENT).mkdir()
    base = f"/experiments/{run['id']}"
    files = [f"{base}/artifacts/{name}" for name in artifacts.RUN_FILES]
    files.append(f"{base}/artifacts/tensorboard/{EVENT}")

    assert client.get(f"{base}/artifacts").json()["items"] == []
    for url in files:  # once first: what the app opens on its first request is not a leak
        assert client.get(url).status_code == 404, url
    before = open_descriptors()
    for _ in range(20):
        for url in files:
            response = client.get(url)
            assert response.status_code == 404 and "no " in response.json()["detail"], url
        logs = client.get(f"{base}/logs")
        assert logs.status_code == 200 and logs.text == ""
    assert open_descriptors() <= before


def test_a_hard_link_planted_as_a_run_file_is_not_served(client, settings, tmp_path):
    # beside the run, on the same file system: a hard link cannot cross one
    secret = artifacts.run_dir(settings, "elsewhere") / "secret.txt"
    secret.parent.mkdir(parents=True)
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    run, directory = succeeded_run(client, settings)
    for name in artifacts.RUN_FILES:
        os.link(secret, directory / name)
    os.link(secret, directory / artifacts.TENSORBOARD / EVENT)
    base = f"/experiments/{run['id']}"

    assert client.get(f"{base}/artifacts").json()["items"] == []
    for url in [f"{base}/artifacts/{name}" for name in artifacts.RUN_FILES] + [
        f"{base}/artifacts/tensorboard/{EVENT}"
    ]:
        response = client.get(url)
        assert response.status_code == 404 and "root:" not in response.text, url
    assert client.get(f"{base}/logs").text == ""

    # the file itself, once it is the only name of it, is served
    os.unlink(secret)
    for name in artifacts.RUN_FILES[1:]:
        os.unlink(directory / name)
    os.unlink(directory / artifacts.TENSORBOARD / EVENT)
    assert client.get(f"{base}/artifacts/model.pt").text.startswith("root:")


def test_a_study_serves_no_hard_link_nor_directory_as_its_dense_model(client, settings):
    study = client.post("/studies", json={"name": "s", "base_preset": "micro",
                                       "experiments": ["top2"]}).json()  # fmt: skip
    dense_id = study["members"][0]["id"]
    succeed(settings.database_url, dense_id, result(3.0, dense=True))
    dense_dir = artifacts.run_dir(settings, run_row(settings.database_url, dense_id).run_key)
    (dense_dir / artifacts.MODEL).mkdir(parents=True)
    url = f"/studies/{study['id']}/artifacts"
    assert client.get(f"{url}/dense_model.pt").status_code == 404
    before = open_descriptors()
    for _ in range(20):
        assert client.get(f"{url}/dense_model.pt").status_code == 404
    assert open_descriptors() <= before

    (dense_dir / artifacts.MODEL).rmdir()
    (dense_dir / "weights").write_bytes(b"dense weights")
    os.link(dense_dir / "weights", dense_dir / artifacts.MODEL)
    assert [a["name"] for a in client.get(url).json()["items"]] == ["experiment_results.json"]
    assert client.get(f"{url}/dense_model.pt").status_code == 404


def test_a_socket_planted_as_a_run_file_is_a_404(client, settings, monkeypatch):
    run, directory = succeeded_run(client, settings)
    monkeypatch.chdir(directory)  # a relative name: a socket's path is limited to 108 bytes
    with socket.socket(socket.AF_UNIX) as planted:
        planted.bind(artifacts.RESULT)
        response = client.get(f"/experiments/{run['id']}/artifacts/{artifacts.RESULT}")
    assert response.status_code == 404
