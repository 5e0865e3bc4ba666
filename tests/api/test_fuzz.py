"""A bounded schema fuzz of the app in-process (schemathesis): whatever a client sends
within or around the schema, no response is a 5xx, every one matches the schema, and the
schema is the contract both ways: a body valid against it is accepted or refused only by a
rule it states (api/rules.py), and one invalid against it is refused."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode, checks

from api.main import create_app
from store.settings import get_settings

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)

# Cases per operation and mode: about 450 in all, well under a minute; the two request
# bodies, where the rules live, get more.
EXAMPLES = 15
BODY_EXAMPLES = 60
TOKEN = "fuzz-token"


@pytest.mark.parametrize("role", ["admin", "member", "viewer"])
def test_no_server_error_and_the_schema_is_the_contract(deployment, role):
    # A database and queue of its own: the fuzz's runs land nowhere another test counts.
    app = create_app()
    # with the token set, as the schema's security says: schemathesis also checks that a
    # wrong token is refused
    own = deployment(api_token=SecretStr(TOKEN))
    app.dependency_overrides[get_settings] = lambda: own
    # the bootstrap admin (MOE_API_TOKEN), or a user of the role with a token of their own:
    # a member's and a viewer's refusals (403) are declared like any other answer
    token = TOKEN if role == "admin" else user_token(own.database_url, f"fuzz-{role}", role)
    scale = 1 if role == "admin" else 3  # the others: a third of the cases
    openapi = app.openapi()
    # What the API promises: no 5xx; statuses, content types, headers and bodies as
    # declared; a wrong token refused; a request the schema forbids refused; a request it
    # allows refused only by a rule it states.
    promises = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_headers_conformance,
        checks.response_schema_conformance,
        checks.ignored_auth,
        checks.negative_data_rejection,
        refused_only_by_stated_rules(openapi),
    ]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    # every body and every write is fuzzed, /sweeps' included
    labels = {operation.label for operation in operations}
    assert {"POST /experiments", "POST /studies", "POST /sweeps", "DELETE /sweeps/{sweep_id}",
            "POST /sweeps/{sweep_id}/cancel", "PATCH /experiments/{experiment_id}"} <= labels  # fmt: skip

    for operation, mode in itertools.product(operations, GenerationMode):
        # positive cases follow the schema; negative ones break it (wrong types, out of
        # range, unknown fields), which must be a 4xx, never a 5xx

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=(BODY_EXAMPLES if operation.body else EXAMPLES) // scale,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same cases every run: CI fails on a change, not on luck
            database=None,
        )
        def fuzz(case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=promises)

        try:
            fuzz()
        except Unsatisfiable:
            # an operation without parameters or a body has nothing to break
            assert mode is GenerationMode.NEGATIVE, operation.label


def user_token(database_url: str, name: str, role: str) -> str:
    from store import users
    from store.db import session_scope
    from store.models import Role

    with session_scope(database_url) as session:
        user = users.create_user(session=session, name=name, role=Role(role))
        _, secret = users.create_token(session=session, user=user, name="fuzz", expires_at=None)
        session.commit()
    return secret


def refused_only_by_stated_rules(openapi: dict[str, Any]):
    """A check: a request valid against the schema is not refused (422) except by a rule
    the schema states, i.e. each error's `type` is named in the description of a model or
    field on its `loc` (a query parameter's own; `body`, `base`, `batch_size`: ExperimentCreate, its `base`,
    BaseOverrides, its `batch_size`)."""

    def check(ctx, response, case) -> None:
        if case.meta is None or not case.meta.generation.mode.is_positive:
            return
        if response.status_code != 422:
            return
        operation = openapi["paths"][case.operation.path][case.method.lower()]
        for error in response.json()["detail"]:
            said = " ".join(_descriptions_along(openapi, operation, error["loc"]))
            assert f"`{error['type']}`" in said, (
                f"{case.method} {case.path}: a request valid against the schema was refused "
                f"by a rule the schema does not state: {error} (body: {case.body!r})"
            )

    return check


def _descriptions_along(openapi: dict, operation: dict, loc: list) -> list[str]:
    """The descriptions of every schema a request body's error location passes through; for
    a query parameter's (`query`, name), the parameter's own."""
    if len(loc) >= 2 and loc[0] == "query":
        return [p.get("description", "") for p in operation.get("parameters", [])
                if p["in"] == "query" and p["name"] == loc[1]]  # fmt: skip
    if not loc or loc[0] != "body" or "requestBody" not in operation:
        return []
    schemas = openapi["components"]["schemas"]

    def resolved(node: dict) -> tuple[dict, list[str]]:
        texts = [node.get("description", "")]
        while True:
            if "$ref" in node:
                node = schemas[node["$ref"].rsplit("/", 1)[1]]
            elif "anyOf" in node:  # T | null: the T
                node = next(arm for arm in node["anyOf"] if arm.get("type") != "null")
            else:
                return node, texts
            texts.append(node.get("description", ""))

    node, texts = resolved(operation["requestBody"]["content"]["application/json"]["schema"])
    for part in loc[1:]:
        if isinstance(part, int) and "items" in node:
            child = node["items"]
        elif isinstance(part, str) and part in node.get("properties", {}):
            child = node["properties"][part]
        else:
            break
        node, more = resolved(child)
        texts += more
    return texts
