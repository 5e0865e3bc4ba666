"""A run's tags and note from the client (`Client.update`) and the CLI (`moe-lab tag`,
`moe-lab note`), over PATCH /experiments/{id} on the real app and Postgres."""

from __future__ import annotations

import json

import pytest

from moe_lab.client import ApiError

pytestmark = pytest.mark.services


@pytest.fixture()
def run_id(http) -> int:
    body = {"name": "labelled", "base_preset": "micro", "tags": ["draft"]}
    response = http.post("/experiments", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def ok(result) -> str:
    assert result.exit_code == 0, result.output + result.stderr
    return result.stdout


def test_the_client_adds_removes_and_notes(api, run_id):
    run = api.update(run_id, add_tags=["keep", "paper"], remove_tags=["draft"])
    assert run["tags"] == ["keep", "paper"] and run["note"] is None
    assert api.update(run_id, note="spike at epoch 3")["note"] == "spike at epoch 3"
    # tags alone leave the note; note=None clears it
    assert api.update(run_id, add_tags=["x"])["note"] == "spike at epoch 3"
    cleared = api.update(run_id, note=None)
    assert cleared["note"] is None and cleared["tags"] == ["keep", "paper", "x"]
    assert api.list_experiments(tag="paper")["items"][0]["id"] == run_id

    with pytest.raises(ApiError) as bad:
        api.update(run_id, add_tags=["has space"])
    assert bad.value.status == 422 and "tags.add" in str(bad.value)
    with pytest.raises(ApiError) as missing:
        api.update(999999, note="x")
    assert missing.value.status == 404


def test_tag_takes_plus_minus_and_bare_names(cli, api, run_id):
    text = ok(cli("tag", run_id, "+keep", "-draft", "paper"))
    assert text == f"experiment {run_id} tags: keep, paper\n"
    assert api.experiment(run_id)["tags"] == ["keep", "paper"]
    as_json = json.loads(ok(cli("tag", run_id, "-keep", "--json")))
    assert as_json["tags"] == ["paper"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["+a", "-a"], "error: both added and removed: a\n"),
        (["+"], "error: '+' names no tag\n"),
    ],
)
def test_tag_refuses_a_contradiction_in_one_line(cli, api, run_id, args, message):
    refused = cli("tag", run_id, *args)
    assert (refused.exit_code, refused.stderr) == (2, message)
    assert api.experiment(run_id)["tags"] == ["draft"]


def test_a_bad_tag_is_the_apis_one_line_error(cli, run_id):
    refused = cli("tag", run_id, "+has space")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: 422 ") and "tags.add" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1


def test_note_sets_prints_and_clears(cli, api, run_id):
    assert ok(cli("note", run_id)) == f"experiment {run_id} has no note\n"
    assert ok(cli("note", run_id, "lr too high [from epoch 3]")) == "lr too high [from epoch 3]\n"
    assert api.experiment(run_id)["note"] == "lr too high [from epoch 3]"
    assert ok(cli("note", run_id)) == "lr too high [from epoch 3]\n"
    assert json.loads(ok(cli("note", run_id, "--json")))["note"] == "lr too high [from epoch 3]"
    shown = ok(cli("show", run_id))
    assert "lr too high [from epoch 3]" in shown
    ok(cli("note", run_id, "--clear"))
    assert api.experiment(run_id)["note"] is None

    both = cli("note", run_id, "text", "--clear")
    assert (both.exit_code, both.stderr) == (2, "error: give a note or --clear, not both\n")


def test_tag_dash_h_is_help_not_a_tag_called_h(cli, api, run_id):
    api.update(run_id, add_tags=["h"])
    helped = cli("tag", run_id, "-h")
    assert helped.exit_code == 0 and "Usage:" in helped.stdout and "+TAG" in helped.stdout
    assert "h" in api.experiment(run_id)["tags"]  # nothing was removed
    assert "Usage:" in ok(cli("-h"))
