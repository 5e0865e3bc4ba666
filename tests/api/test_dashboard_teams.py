"""The dashboard on a shared API (issue 27), in a real browser (tests/fixtures/browser.py)
against a real uvicorn and Postgres with MOE_API_TOKEN set: the page asks for a token,
signing in shows the runs and who you are, the "mine" toggle (kept in the URL) shows only
yours, every page names the owner, signing out asks again, and no URL ever holds a token."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from moe_core.search import SweepConfig
from store import sweeps
from store.db import session_scope
from tests.factories import request_body
from tests.fixtures.browser import docs_shot, shot, wait_in_page

pytestmark = [pytest.mark.services, pytest.mark.browser]

ADMIN_TOKEN = "b00tstrap-s3cret"
ROWS = "[...document.querySelectorAll('#runs tbody tr[data-run]')]"


def user_with_token(url: str, name: str) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    made = httpx.post(f"{url}/users", json={"name": name, "role": "member"}, headers=admin)
    assert made.status_code == 201, made.text
    token = httpx.post(f"{url}/users/{name}/tokens", json={"name": "browser"}, headers=admin)
    assert token.status_code == 201, token.text
    return token.json()["token"]


def submit(url: str, token: str, path: str, body: dict) -> dict:
    answer = httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 201, answer.text
    return answer.json()


def owners_shown(page) -> dict[str, str]:
    """run id -> the owner cell of its row in the runs table."""
    return page.evaluate(
        f"""Object.fromEntries({ROWS}.map(r => {{
            const column = [...document.querySelectorAll('#runs thead th')]
                .findIndex(h => h.dataset.column === 'owner');
            return [r.dataset.run, r.children[column].innerText];
        }}))"""
    )


@pytest.mark.console_allows("status of 401")  # the refused token, and the sign-out
def test_signing_in_shows_the_runs_mine_filters_and_every_page_names_the_owner(
    deployment, start_api, page
):
    settings = deployment(api_token=SecretStr(ADMIN_TOKEN))
    api = start_api(settings)
    ada, bob = user_with_token(api.url, "ada"), user_with_token(api.url, "bob")
    ada_runs = [submit(api.url, ada, "/experiments", request_body(f"ada-{n}")) for n in (1, 2)]
    bob_run = submit(api.url, bob, "/experiments", request_body("bob-1"))
    study = submit(api.url, ada, "/studies", request_body("ada-study", experiments=["top2"]))
    with session_scope(settings.database_url) as session:
        config = SweepConfig(base_preset="micro", method="grid", seeds=1, name="bob-sweep",
                             space={"top_k": {"choices": [1, 2]}})  # fmt: skip
        sweep, _ = sweeps.create_sweep(session=session, config=config, base=config.base_config(),
                                       parallel=1, owner="bob")  # fmt: skip
        session.commit()
        sweep_id = sweep.id
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))

    page.goto(f"{api.url}/ui/#/")
    page.wait_for_selector("#token-dialog[open]")
    docs_shot(page, "dashboard-sign-in", full_page=False)
    page.fill("#token-input", "moe_wrong")
    page.click("#token-dialog button")
    page.wait_for_selector("#token-error:has-text('refused (unknown token')")
    page.fill("#token-input", ada)
    page.click("#token-dialog button")
    page.wait_for_selector(f'#runs tr[data-run="{bob_run["id"]}"]')
    page.wait_for_selector("#sign-out")
    assert page.inner_text("#who") == "ada (member) · sign out"
    assert page.evaluate("localStorage.getItem('moe-lab-token')") == ada

    members = [m["id"] for m in study["members"]]
    shown = owners_shown(page)
    assert {shown[str(run["id"])] for run in ada_runs} == {"ada"}
    assert shown[str(bob_run["id"])] == "bob"
    assert all(shown[str(m)] == "ada" for m in members)
    docs_shot(page, "dashboard-owners")

    page.check("#mine")
    wait_in_page(page, f"!document.querySelector('#runs tr[data-run=\"{bob_run['id']}\"]')")
    assert page.evaluate("location.hash") == "#/?mine=1"
    mine = {int(i) for i in page.evaluate(f"{ROWS}.map(r => r.dataset.run)")}
    assert mine == {run["id"] for run in ada_runs} | set(members)
    shot(page, "dashboard-mine")

    page.reload()  # signed in still, and still only mine: the token kept, the toggle in the URL
    page.wait_for_selector(f'#runs tr[data-run="{ada_runs[0]["id"]}"]')
    assert page.is_checked("#mine") and not page.locator("#token-dialog[open]").count()
    assert {int(i) for i in page.evaluate(f"{ROWS}.map(r => r.dataset.run)")} == mine
    page.uncheck("#mine")
    page.wait_for_selector(f'#runs tr[data-run="{bob_run["id"]}"]')
    assert page.evaluate("location.hash") == "#/"

    page.goto(f"{api.url}/ui/#/run/{bob_run['id']}")
    page.wait_for_selector("#run-owner")
    assert page.inner_text("#run-owner").split() == ["owner", "bob"]
    shot(page, "dashboard-run-owner")
    # another's run: nothing to change on it (the API would refuse it: 403)
    assert not page.locator("#cancel").count() and not page.locator("#tag-form").count()
    assert page.get_attribute("#labels", "data-editable") == "false"
    page.goto(f"{api.url}/ui/#/run/{ada_runs[0]['id']}")
    page.wait_for_selector("#cancel")
    assert page.locator("#tag-form").count() == 1
    page.goto(f"{api.url}/ui/#/study/{study['id']}")
    page.wait_for_selector("#study-owner")
    assert page.inner_text("#study-owner").split() == ["owner", "ada"]
    page.goto(f"{api.url}/ui/#/studies")
    page.wait_for_selector(f'#studies tr[data-study="{study["id"]}"] td.owner:has-text("ada")')
    page.goto(f"{api.url}/ui/#/sweep/{sweep_id}")
    page.wait_for_selector("#sweep-owner")
    assert page.inner_text("#sweep-owner") == "by bob"
    shot(page, "dashboard-sweep-owner")
    page.goto(f"{api.url}/ui/#/sweeps")
    page.wait_for_selector('td.owner:has-text("bob")')

    page.click("#sign-out")
    page.wait_for_selector("#token-dialog[open]")
    assert page.evaluate("localStorage.getItem('moe-lab-token')") is None
    assert not any(token in url for url in urls for token in (ada, "moe_wrong"))


def test_an_open_deployment_asks_for_nothing_and_has_nothing_to_sign_out_of(
    deployment, start_api, page
):
    settings = deployment()  # no MOE_API_TOKEN: the embedded default's way
    api = start_api(settings)
    run = httpx.post(f"{api.url}/experiments", json=request_body("open")).json()
    page.goto(f"{api.url}/ui/#/")
    page.wait_for_selector(f'#runs tr[data-run="{run["id"]}"]')
    page.wait_for_selector("#who-name")
    assert page.inner_text("#who") == "admin (admin)"
    assert not page.locator("#sign-out").count() and not page.locator("#token-dialog[open]").count()
    assert owners_shown(page) == {str(run["id"]): "admin"}
