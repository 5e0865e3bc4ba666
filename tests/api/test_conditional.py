"""Conditional GETs of what the dashboard polls: the runs list and a study answer 304 to
their ETag until something in them changes, with the same body as before."""

from __future__ import annotations

import pytest

from api.schemas import ExperimentList, StudyRead
from tests.factories import claim, result, succeed

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)


def _again(client, path: str, etag: str):
    return client.get(path, headers={"If-None-Match": etag})


def test_the_runs_list_answers_304_until_a_run_changes(client, service_settings):
    created = client.post("/experiments", json={"name": "polled", "base_preset": "micro"}).json()
    path = "/experiments?name=polled&limit=5"
    first = client.get(path)
    assert first.status_code == 200 and first.json()["items"][0]["id"] == created["id"]
    ExperimentList.model_validate(first.json())  # the schema's shape, as before
    etag = first.headers["etag"]
    unchanged = _again(client, path, etag)
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert unchanged.headers["etag"] == etag
    # a list of tags, and the weak form, as browsers and proxies send them
    assert _again(client, path, f'"other", W/{etag}').status_code == 304
    assert _again(client, path, "*").status_code == 304  # any representation
    assert _again(client, "/experiments?name=polled&status=failed", etag).status_code == 200

    claim(service_settings.database_url, created["id"], "w")  # queued -> running
    moved = _again(client, path, etag)
    assert moved.status_code == 200 and moved.headers["etag"] != etag
    assert moved.json()["items"][0]["status"] == "running"


def test_a_study_answers_304_until_a_member_finishes(client, service_settings):
    study = client.post("/studies", json={"name": "polled", "base_preset": "micro",
                                          "experiments": ["baseline"]}).json()  # fmt: skip
    path = f"/studies/{study['id']}"
    first = client.get(path)
    StudyRead.model_validate(first.json())
    etag = first.headers["etag"]
    assert _again(client, path, etag).status_code == 304
    succeed(service_settings.database_url, study["dense_id"], result(5.0, dense=True))
    finished = _again(client, path, etag)
    assert finished.status_code == 200 and finished.headers["etag"] != etag
    dense = next(m for m in finished.json()["members"] if m["dense"])
    assert dense["status"] == "succeeded"
    assert client.get("/studies/999999", headers={"If-None-Match": etag}).status_code == 404
