"""Teams on one service: two members, a viewer and an admin, on the real stack (Postgres,
Redis). Each write is its owner's or an admin's, a viewer reads, a revoked or expired token
or a disabled user is refused at the next request, reads follow the roles on every route
/openapi.json lists, quotas refuse before storing, and every change is in the audit trail
without a secret."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import update

from store.db import session_scope
from store.models import ApiToken, Experiment, utcnow
from tests.client import make_client
from tests.factories import fast_base, request_body

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)

BOOTSTRAP = "bootstrap-secret"
SWEEP = {"name": "sw", "base_preset": "micro", "base": fast_base(), "preset": "top2",
         "space": {"capacity_factor": {"choices": [1.0, 2.0]}}, "method": "grid", "seeds": 1,
         "parallel": 1}  # fmt: skip


class Lab:
    """The deployment, an API client and a bearer header per person."""

    def __init__(self, settings, api):
        self.settings, self.api = settings, api
        self.headers = {"root": {"Authorization": f"Bearer {BOOTSTRAP}"}}

    def add(self, name: str, role: str, **quotas) -> dict:
        made = self.api.post("/users", json={"name": name, "role": role, **quotas},
                             headers=self.headers["root"])  # fmt: skip
        assert made.status_code == 201, made.text
        token = self.api.post(f"/users/{name}/tokens", json={"name": "laptop"},
                              headers=self.headers["root"])  # fmt: skip
        assert token.status_code == 201, token.text
        self.headers[name] = {"Authorization": f"Bearer {token.json()['token']}"}
        return token.json()

    def call(self, who: str, method: str, path: str, **kwargs):
        return self.api.request(method, path, headers=self.headers.get(who, {}), **kwargs)


@pytest.fixture()
def lab(deployment):
    settings = deployment(api_token=SecretStr(BOOTSTRAP))
    with make_client(settings) as api:
        lab = Lab(settings, api)
        for name, role in (("alice", "member"), ("bob", "member"), ("vera", "viewer"),
                           ("ada", "admin")):  # fmt: skip
            lab.add(name, role)
        yield lab


def submitted(lab: Lab, who: str) -> dict:
    run = lab.call(who, "POST", "/experiments", json=request_body(f"{who}-run"))
    study = lab.call(who, "POST", "/studies",
                     json=request_body(f"{who}-study", experiments=["top2"]))  # fmt: skip
    sweep = lab.call(who, "POST", "/sweeps", json={**SWEEP, "name": f"{who}-sweep"})
    for answer in (run, study, sweep):
        assert answer.status_code == 201, answer.text
    return {"run": run.json()["id"], "study": study.json()["id"], "sweep": sweep.json()["id"]}


def test_each_write_is_the_owners_or_an_admins(lab):
    mine = submitted(lab, "alice")
    run = lab.call("alice", "GET", f"/experiments/{mine['run']}").json()
    assert run["owner"] == "alice"
    writes = [
        ("PATCH", f"/experiments/{mine['run']}", {"json": {"note": "mine"}}),
        ("POST", f"/experiments/{mine['run']}/cancel", {}),
        ("DELETE", f"/experiments/{mine['run']}", {}),
        ("DELETE", f"/studies/{mine['study']}", {}),
        ("POST", f"/sweeps/{mine['sweep']}/cancel", {}),
        ("DELETE", f"/sweeps/{mine['sweep']}", {}),
    ]
    for method, path, kwargs in writes:
        for who in ("bob", "vera"):
            refused = lab.call(who, method, path, **kwargs)
            assert refused.status_code == 403, (who, method, path, refused.text)
            assert "alice's" in refused.json()["detail"], refused.text
    # nothing changed under the refusals
    assert lab.call("alice", "GET", f"/experiments/{mine['run']}").json()["note"] is None
    # the owner changes their own; an admin anyone's
    assert lab.call("alice", "PATCH", f"/experiments/{mine['run']}",
                    json={"note": "mine"}).status_code == 200  # fmt: skip
    assert lab.call("alice", "POST", f"/experiments/{mine['run']}/cancel").status_code == 200
    assert lab.call("ada", "POST", f"/sweeps/{mine['sweep']}/cancel").status_code == 200
    # priority is an admin's word only, even on one's own run
    assert lab.call("alice", "PATCH", f"/experiments/{mine['run']}",
                    json={"priority": 5}).status_code == 403  # fmt: skip
    raised = lab.call("ada", "PATCH", f"/experiments/{mine['run']}", json={"priority": 5})
    assert raised.status_code == 200 and raised.json()["priority"] == 5


def test_a_viewer_reads_and_cannot_submit(lab):
    refused = lab.call("vera", "POST", "/experiments", json=request_body("v"))
    assert refused.status_code == 403 and "viewer" in refused.json()["detail"]
    for path in ("/studies", "/sweeps"):
        assert lab.call("vera", "POST", path, json=SWEEP).status_code in (403, 422)
    submitted(lab, "bob")
    assert lab.call("vera", "GET", "/experiments").json()["total"] >= 1
    with session_scope(lab.settings.database_url) as session:
        assert session.query(Experiment).filter(Experiment.owner == "vera").count() == 0


def test_a_revoked_or_expired_token_and_a_disabled_user_are_refused_at_once(lab):
    extra = lab.call("bob", "POST", "/users/bob/tokens", json={"name": "ci"})
    assert extra.status_code == 201  # a user makes their own tokens
    secret, token_id = extra.json()["token"], extra.json()["id"]
    ci = {"Authorization": f"Bearer {secret}"}
    assert lab.api.get("/experiments", headers=ci).status_code == 200
    listed = lab.call("bob", "GET", "/users/bob/tokens").json()["items"]
    assert secret not in str(listed) and {t["name"] for t in listed} == {"laptop", "ci"}
    assert lab.call("alice", "GET", "/users/bob/tokens").status_code == 403  # not hers
    assert lab.call("bob", "DELETE", f"/users/bob/tokens/{token_id}").status_code == 204
    refused = lab.api.get("/experiments", headers=ci)
    assert refused.status_code == 401 and refused.json()["detail"].startswith("revoked token")
    # expired: its time passed (set in the store; the API makes none shorter than a day)
    with session_scope(lab.settings.database_url) as session:
        session.execute(update(ApiToken).where(ApiToken.name == "laptop")
                        .values(expires_at=utcnow() - timedelta(seconds=1)))  # fmt: skip
        session.commit()
    refused = lab.call("alice", "GET", "/experiments")
    assert refused.status_code == 401 and refused.json()["detail"].startswith("expired token")
    fresh = lab.call("root", "POST", "/users/bob/tokens", json={"name": "new"}).json()["token"]
    assert lab.call("root", "PATCH", "/users/bob", json={"disabled": True}).status_code == 200
    refused = lab.api.get("/experiments", headers={"Authorization": f"Bearer {fresh}"})
    assert refused.status_code == 401 and refused.json()["detail"].startswith("disabled user")


def test_reads_follow_the_roles_on_every_route(lab):
    """Every route of /openapi.json, as each person: without a token a 401; reads open to
    every role but the admin's own (users, audit), each of which says so with a 403."""
    ids = submitted(lab, "alice")
    # ended, so that its event stream ends too once it has said so
    assert lab.call("alice", "POST", f"/experiments/{ids['run']}/cancel").status_code == 200
    schema = lab.api.get("/openapi.json").json()
    values = {"experiment_id": ids["run"], "study_id": ids["study"], "sweep_id": ids["sweep"],
              "name": "alice", "token_id": 1, "file": "run.log", "event_file": "x"}  # fmt: skip
    admin_only = {"/users", "/audit", "/users/{name}", "/users/{name}/tokens"}
    open_paths = {"/healthz", "/readyz"}
    checked = 0
    for path, operations in schema["paths"].items():
        if "get" not in operations:
            continue
        url = re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), 1)), path)
        if path not in open_paths:
            assert lab.api.get(url).status_code == 401, path  # no token, nothing told
        for who in ("vera", "bob", "ada"):
            answer = lab.call(who, "GET", url)
            if path in admin_only and who != "ada":
                assert answer.status_code == 403, (who, path, answer.text)
            else:
                assert answer.status_code not in (401, 403), (who, path, answer.text)
        checked += 1
    assert checked >= 20  # a new read route is in the loop without being listed here


def test_quotas_refuse_before_anything_is_stored(lab):
    lab.add("quinn", "member", max_queued_runs=2)
    for i in range(2):
        ok = lab.call("quinn", "POST", "/experiments", json=request_body(f"q{i}"))
        assert ok.status_code == 201
    before = lab.call("root", "GET", "/experiments").json()["total"]
    over = lab.call("quinn", "POST", "/experiments", json=request_body("q-over"))
    assert over.status_code == 429
    assert "quinn has 2 runs queued" in over.json()["detail"]
    assert "limit of 2 (max_queued_runs)" in over.json()["detail"]
    study = lab.call("quinn", "POST", "/studies", json=request_body("qs", experiments=["top2"]))
    assert study.status_code == 429
    assert lab.call("root", "GET", "/experiments").json()["total"] == before
    me = lab.call("quinn", "GET", "/users/me").json()
    assert (me["queued_runs"], me["max_queued_runs"]) == (2, 2)


def test_owner_filters_and_idempotency_keys_are_per_user(lab):
    submitted(lab, "alice")
    submitted(lab, "bob")
    mine = lab.call("alice", "GET", "/experiments?owner=me").json()["items"]
    assert mine and {r["owner"] for r in mine} == {"alice"}
    assert {s["owner"] for s in lab.call("bob", "GET", "/studies?owner=me").json()["items"]} == {
        "bob"
    }
    assert lab.call("bob", "GET", "/sweeps?owner=alice").json()["items"][0]["owner"] == "alice"
    key = {"Idempotency-Key": "shared-key"}
    first = lab.api.post("/experiments", json=request_body("k"),
                         headers={**lab.headers["alice"], **key})  # fmt: skip
    assert first.status_code == 201
    other = lab.api.post("/experiments", json=request_body("k"),
                         headers={**lab.headers["bob"], **key})  # fmt: skip
    assert other.status_code == 409 and "another user" in other.json()["detail"]


def test_every_change_is_in_the_audit_trail_without_a_secret(lab):
    mine = submitted(lab, "alice")
    lab.call("alice", "PATCH", f"/experiments/{mine['run']}", json={"tags": {"add": ["x"]}})
    lab.call("alice", "POST", f"/experiments/{mine['run']}/cancel")
    lab.call("alice", "DELETE", f"/experiments/{mine['run']}")
    made = lab.call("alice", "POST", "/users/alice/tokens", json={"name": "ci"}).json()
    lab.call("alice", "DELETE", f"/users/alice/tokens/{made['id']}")
    assert lab.call("alice", "GET", "/audit").status_code == 403
    trail = lab.call("ada", "GET", "/audit?limit=1000").json()
    seen = {(e["actor"], e["action"]) for e in trail["items"]}
    assert {("admin", "user.create"), ("admin", "token.create"), ("alice", "experiment.create"),
            ("alice", "study.create"), ("alice", "sweep.create"),
            ("alice", "experiment.update"), ("alice", "experiment.cancel"),
            ("alice", "experiment.delete"), ("alice", "token.create"),
            ("alice", "token.revoke")} <= seen  # fmt: skip
    assert made["token"] not in str(trail) and BOOTSTRAP not in str(trail)


def test_an_open_deployment_needs_no_login_and_the_bootstrap_token_is_the_admin(deployment):
    with make_client(deployment()) as api:  # the embedded default's way: no MOE_API_TOKEN
        run = api.post("/experiments", json=request_body("open"))
        assert run.status_code == 201 and run.json()["owner"] == "admin"
        assert api.get("/users/me").json()["role"] == "admin"
        # a user's token still says who is asking
        api.post("/users", json={"name": "ben", "role": "viewer"})
        secret = api.post("/users/ben/tokens", json={"name": "t"}).json()["token"]
        refused = api.post("/experiments", json=request_body("x"),
                           headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
        assert refused.status_code == 403
        assert api.get("/experiments", headers={"Authorization": "Bearer nope"}).status_code == 401
