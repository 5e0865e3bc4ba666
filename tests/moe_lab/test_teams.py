"""The CLI on a shared API (issue 27): `login` keeps a token 0600 and never prints it;
`token create | ls | revoke`; `admin user add | ls | set | disable | enable` and `admin
audit`; `ls --mine` and the owner column; a refusal (401, 403, 429) as one line. Against
the real app on Postgres, with MOE_API_TOKEN set: the bootstrap admin and the users it adds."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from itertools import count
from pathlib import Path

import pytest
from pydantic import SecretStr

from moe_lab import credentials
from moe_lab.client import Client
from tests.factories import request_body

ADMIN_TOKEN = "b00tstrap-s3cret"
_names = count(1)


@pytest.fixture(scope="module")
def settings(deployment):
    return deployment(api_token=SecretStr(ADMIN_TOKEN))


@pytest.fixture()
def admin(http) -> Client:
    return Client(http=http, token=ADMIN_TOKEN)


@pytest.fixture()
def member(admin):
    """A new member, and a client with their token: (name, client)."""
    return new_user(admin, "member")


def new_user(admin: Client, role: str, **quotas: int) -> tuple[str, Client]:
    name = f"{role}-{next(_names)}"
    admin.create_user(name, role, **quotas)
    return name, admin.with_token(admin.create_token("tests", user=name)["token"])


def ok(result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def one_line_error(result, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_login_checks_the_token_and_keeps_it_owner_only_without_printing_it(cli, http, admin):
    name, _ = new_user(admin, "member")
    secret = admin.create_token("laptop", user=name)["token"]
    anonymous = Client(http=http, token="")

    wrong = cli("login", "--token", "moe_not-a-token", client=anonymous)
    assert one_line_error(wrong).startswith("error: 401 unknown token")
    assert "nothing was kept" in wrong.stderr
    assert not credentials.config_path().exists()

    logged = cli("login", input=f"{secret}\n", client=anonymous)  # piped: read from stdin
    path = credentials.config_path()
    assert ok(logged).splitlines() == [
        f"logged in to http://testserver as {name} (member)",
        f"the token is kept in {path} (readable by you only)",
    ]
    assert logged.stderr == ""
    assert secret not in logged.stdout + logged.stderr
    assert path == Path(os.environ["XDG_CONFIG_HOME"], "moe-lab", "config.toml")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temporary left
    assert tomllib.loads(path.read_text()) == {"url": "http://testserver", "token": secret}

    # a later command on that URL sends it; one pointed at another API does not
    kept = Client(http=http)
    assert (kept.token, kept.token_source) == (secret, str(path))
    assert Client("http://elsewhere:8000").token is None
    who = ok(cli("whoami", client=kept))
    assert who.splitlines()[0] == f"{name} (member) at http://testserver"
    assert f"kept by moe-lab login in {path}" in who
    assert secret not in who

    # revoked: the next command says which token was refused, and what to do
    laptop = next(t for t in admin.tokens(user=name)["items"] if t["name"] == "laptop")
    admin.revoke_token(laptop["id"], user=name)
    assert one_line_error(cli("whoami", client=Client(http=http))) == (
        "error: 401 revoked token: missing or wrong bearer token (the token moe-lab login "
        f"kept in {path}: moe-lab login again)\n"
    )

    assert ok(cli("logout")).strip() == f"logged out: {path} removed"
    assert not path.exists()
    assert ok(cli("logout")).strip() == "not logged in: nothing to forget"


def test_a_login_file_that_others_can_read_is_refused(cli, http, admin):
    path = credentials.save(credentials.Login("http://testserver", "moe_x"))
    path.chmod(0o644)
    with pytest.raises(credentials.LoginFileError, match="chmod 600"):
        Client(http=http)
    from typer.testing import CliRunner

    from moe_lab.cli import app

    refused = CliRunner().invoke(app, ["--url", "http://testserver", "ls"])
    assert one_line_error(refused, 2).startswith(f"error: {path} holds a token and others")
    # login replaces it, 0600 again
    name, _ = new_user(admin, "viewer")
    secret = admin.create_token("again", user=name)["token"]
    ok(cli("login", "--token", secret, client=Client(http=http, token="")))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_token_create_prints_the_secret_once_then_ls_and_revoke(cli, member, admin):
    name, client = member
    made = cli("token", "create", "ci", "--expires-in-days", "30", client=client)
    secret = ok(made).strip()
    assert made.stdout == f"{secret}\n" and secret.startswith("moe_")  # the secret alone
    assert "shown this once, it cannot be shown again" in made.stderr
    assert made.stderr.count("\n") == 1
    assert client.with_token(secret).me()["name"] == name

    listed = ok(cli("token", "ls", client=client))
    row = next(line for line in listed.splitlines() if " ci " in f" {line} ")
    token_id = row.split()[0]
    assert row.split()[1:3] == ["ci", "active"] and secret not in listed

    assert (
        ok(cli("token", "revoke", token_id, client=client)).strip() == f"token {token_id} revoked"
    )
    refused = cli("whoami", client=client.with_token(secret))
    assert one_line_error(refused).startswith("error: 401 revoked token")
    listed = json.loads(ok(cli("token", "ls", "--json", client=client)))["items"]
    assert next(t for t in listed if str(t["id"]) == token_id)["revoked_at"] is not None

    # an admin makes and lists another's tokens; a member may not
    ok(cli("token", "create", "by-admin", "--user", name, client=admin))
    assert "by-admin" in ok(cli("token", "ls", "--user", name, client=admin))
    other, _ = new_user(admin, "member")
    denied = cli("token", "ls", "--user", other, client=client)
    assert one_line_error(denied) == (
        f"error: 403 {name} may manage their own tokens only, not {other}'s\n"
    )


def test_admin_adds_lists_changes_disables_and_enables_users(cli, admin, member, http):
    name = f"viewer-{next(_names)}"
    added = ok(cli("admin", "user", "add", name, "--role", "viewer", "--max-queued-runs", "3",
                   client=admin))  # fmt: skip
    assert added.startswith(f"added {name} (viewer)")
    secret = admin.create_token("laptop", user=name)["token"]
    viewer = admin.with_token(secret)

    listed = ok(cli("admin", "user", "ls", client=admin))
    row = next(line.split() for line in listed.splitlines() if line.startswith(f"{name} "))
    # queued 0 of 3; GPUs 0 of the deployment's limit
    assert row[:7] == [name, "viewer", "active", "0", "3", "0", "default"]

    assert one_line_error(cli("admin", "user", "ls", client=viewer)) == (
        f"error: 403 {name} is a viewer: only an admin may do this\n"
    )
    bad_role = cli("admin", "user", "add", "x", "--role", "god", client=admin)
    assert bad_role.exit_code == 2 and "'god' is not one of" in bad_role.stderr  # typer's own

    assert "disabled" in ok(cli("admin", "user", "disable", name, client=admin))
    assert one_line_error(cli("whoami", client=viewer)).startswith("error: 401 disabled user")
    assert "active" in ok(cli("admin", "user", "enable", name, client=admin))
    assert ok(cli("whoami", client=viewer)).startswith(f"{name} (viewer)")

    changed = ok(cli("admin", "user", "set", name, "--role", "member", "--max-queued-runs",
                     "default", "--max-gpus", "2", client=admin))  # fmt: skip
    assert changed.strip() == (
        f"{name}: member, active; queued runs limit the deployment's, GPU limit 2"
    )
    assert one_line_error(cli("admin", "user", "set", name, "--max-gpus", "lots", client=admin), 2)

    trail = ok(cli("admin", "audit", "--limit", "1000", client=admin))
    assert f"user {name}" in trail and "user.create" in trail and "user.update" in trail
    assert "token.create" in trail and secret not in trail
    assert one_line_error(cli("admin", "audit", client=viewer)).startswith("error: 403 ")


def test_ls_mine_owner_and_the_owner_column(cli, admin, member, http):
    name, client = member
    mine = client.create_experiment(request_body("teams-mine"))
    theirs = admin.create_experiment(request_body("teams-theirs"))
    study = client.create_study(request_body("teams-study", experiments=["baseline"]))

    listed = json.loads(ok(cli("ls", "--mine", "--json", client=client)))["items"]
    members = [m["id"] for m in study["members"]]
    assert sorted(run["id"] for run in listed) == sorted([mine["id"], *members])
    table = ok(cli("ls", "--mine", client=client))
    header, *rows = [line for line in table.splitlines() if line.strip() and "──" not in line]
    assert header.split()[:3] == ["id", "name", "owner"]
    assert {row.split()[2] for row in rows} == {name}
    assert str(mine["id"]) in {row.split()[0] for row in rows}

    by_admin = ok(cli("ls", "--owner", "admin", "--limit", "500", client=client))
    ids = {line.split()[0] for line in by_admin.splitlines()[2:] if line.strip()}
    assert str(theirs["id"]) in ids and str(mine["id"]) not in ids
    assert one_line_error(cli("ls", "--mine", "--owner", "admin", client=client), 2) == (
        "error: --mine and --owner conflict: choose one\n"
    )

    studies = ok(cli("study", "ls", "--mine", client=client)).splitlines()
    assert studies[0].split()[:3] == ["id", "name", "owner"]
    assert [line.split()[:3] for line in studies[2:]] == [[str(study["id"]), "teams-study", name]]
    shown = ok(cli("show", mine["id"], client=admin)).splitlines()
    assert ["owner", name] in [line.split() for line in shown]
    assert (
        ok(cli("study", "show", study["id"], client=admin))
        .splitlines()[0]
        .endswith(f"; owner {name}")
    )


def test_a_change_to_anothers_run_and_a_submission_over_quota_are_one_line(cli, admin, member):
    owner, client = member
    run = client.create_experiment(request_body("teams-owned"))
    other, intruder = new_user(admin, "member")
    refused = cli("cancel", run["id"], client=intruder)
    assert one_line_error(refused) == (
        f"error: 403 experiment {run['id']} is {owner}'s: only {owner} or an admin may cancel it\n"
    )
    assert one_line_error(cli("tag", run["id"], "+mine", client=intruder)).startswith("error: 403 ")
    _, viewer = new_user(admin, "viewer")
    assert one_line_error(cli("submit", "v", "--base-preset", "micro", client=viewer)).startswith(
        "error: 403 "
    )

    _, capped = new_user(admin, "member", max_queued_runs=1)
    ok(cli("submit", "first", "--base-preset", "micro", client=capped))
    over = one_line_error(cli("submit", "second", "--base-preset", "micro", client=capped))
    assert over.startswith("error: 429 ") and "limit of 1" in over and "nothing was stored" in over

    # an admin sets a run's priority; a member may not
    assert ok(cli("admin", "priority", run["id"], "-5", client=admin)).strip() == (
        f"experiment {run['id']}: priority -5"
    )
    assert one_line_error(cli("admin", "priority", run["id"], "7", client=client)).startswith(
        "error: 403 "
    )
