"""PATCH /experiments/{id}: a run's tags and note change after submission; nothing else
does. Against real Postgres (tests/fixtures/services.py)."""

from __future__ import annotations

import json

import pytest

from api.requests import MAX_NOTE_CHARS, MAX_TAGS
from tests.client import submit

pytestmark = pytest.mark.services


def test_tags_added_and_removed_and_a_note_set_then_cleared(client):
    run = submit(client, "labelled", tags=["draft", "lr-sweep"])
    assert run["note"] is None

    response = client.patch(
        f"/experiments/{run['id']}",
        json={"tags": {"add": ["keep", "lr-sweep"], "remove": ["draft"]}, "note": "spike at 3"},
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["tags"] == ["lr-sweep", "keep"]  # present ones kept, new ones after
    assert changed["note"] == "spike at 3"
    assert {k: v for k, v in changed.items() if k not in ("tags", "note")} == {
        k: v for k, v in run.items() if k not in ("tags", "note")
    }
    assert client.get(f"/experiments/{run['id']}").json()["note"] == "spike at 3"

    # the note alone; removing an absent tag changes nothing
    response = client.patch(
        f"/experiments/{run['id']}", json={"note": None, "tags": {"remove": ["gone"]}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["note"] is None
    assert response.json()["tags"] == ["lr-sweep", "keep"]
    # tags alone leave the note as it is
    client.patch(f"/experiments/{run['id']}", json={"note": "second"})
    after = client.patch(f"/experiments/{run['id']}", json={"tags": {"add": ["x"]}}).json()
    assert after["note"] == "second" and after["tags"] == ["lr-sweep", "keep", "x"]


def test_the_list_sees_a_new_tag_and_its_etag_changes(client):
    run = submit(client, "found-by-tag")
    tag = f"new-{run['id']}"
    first = client.get("/experiments", params={"tag": tag})
    assert first.json()["total"] == 0
    etag = client.get("/experiments").headers["etag"]
    assert client.get("/experiments", headers={"If-None-Match": etag}).status_code == 304

    client.patch(f"/experiments/{run['id']}", json={"tags": {"add": [tag]}})

    found = client.get("/experiments", params={"tag": tag}).json()
    assert [item["id"] for item in found["items"]] == [run["id"]]
    # a page cached before the change is stale now: not a 304
    listed = client.get("/experiments", headers={"If-None-Match": etag})
    assert listed.status_code == 200 and listed.headers["etag"] != etag
    client.patch(f"/experiments/{run['id']}", json={"tags": {"remove": [tag]}})
    assert client.get("/experiments", params={"tag": tag}).json()["total"] == 0


def locs(response) -> list[tuple]:
    assert response.status_code == 422, response.text
    return [tuple(error["loc"]) for error in response.json()["detail"]]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"tags": {"add": ["has space"]}}, ("body", "tags", "add", 0)),
        ({"tags": {"add": ["x" * 51]}}, ("body", "tags", "add", 0)),
        ({"tags": {"remove": [""]}}, ("body", "tags", "remove", 0)),
        ({"tags": {"add": ["a"], "remove": ["a"]}}, ("body", "tags", "remove")),
        ({"tags": {"add": ["a", "a"]}}, ("body", "tags", "add")),
        ({"tags": ["a"]}, ("body", "tags")),
        ({"tags": {"put": ["a"]}}, ("body", "tags", "put")),
        ({"note": "x" * (MAX_NOTE_CHARS + 1)}, ("body", "note")),
        ({"note": "a\x00b"}, ("body", "note")),
        ({"note": 5}, ("body", "note")),
        ({"note": "lone \ud800"}, ("body", "note")),
        ({}, ("body",)),
    ],
)
def test_bad_labels_are_422s_naming_the_field_and_change_nothing(client, body, loc):
    run = submit(client, "bad-labels", tags=["kept"])
    # as JSON text: a lone surrogate travels escaped, as a client in another language sends it
    sent = client.patch(
        f"/experiments/{run['id']}",
        content=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    assert loc in locs(sent)
    again = client.get(f"/experiments/{run['id']}").json()
    assert again["tags"] == ["kept"] and again["note"] is None


def test_tags_past_the_cap_are_refused(client):
    run = submit(client, "many-tags", tags=[f"t{i}" for i in range(MAX_TAGS - 1)])
    response = client.patch(f"/experiments/{run['id']}", json={"tags": {"add": ["a", "b"]}})
    assert locs(response) == [("body", "tags", "add")]
    assert response.json()["detail"][0]["type"] == "too_many_tags"
    assert str(MAX_TAGS) in response.json()["detail"][0]["msg"]
    assert len(client.get(f"/experiments/{run['id']}").json()["tags"]) == MAX_TAGS - 1


@pytest.mark.parametrize("field", ["name", "status", "config", "preset", "best_val_ce_loss"])
def test_every_other_field_is_immutable(client, field):
    run = submit(client, "immutable")
    response = client.patch(f"/experiments/{run['id']}", json={field: "changed", "note": "with it"})
    assert ("body", field) in locs(response)
    (error,) = [e for e in response.json()["detail"] if e["loc"] == ["body", field]]
    assert error["msg"] == f"{field} is immutable: a run changes only its tags, note and priority"
    assert client.get(f"/experiments/{run['id']}").json() == run  # the note did not land


def test_an_unknown_run_is_a_404(client):
    response = client.patch("/experiments/999999", json={"note": "x"})
    assert response.status_code == 404
    assert response.json()["detail"] == "experiment 999999 not found"
