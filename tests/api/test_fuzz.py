"""A bounded schema fuzz of the app in-process (schemathesis): whatever a client sends
within or around the schema, no response is a 5xx and every one matches the schema."""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode, checks

from api.main import create_app
from store.settings import get_settings

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/conftest.py)

# Cases per operation and mode: about 450 in all, well under a minute.
EXAMPLES = 15
TOKEN = "fuzz-token"
# What the API promises: no 5xx; statuses, content types, headers and bodies as declared; a
# wrong token refused. Not positive_data_acceptance: a body the schema allows can still be a
# 422 on a rule across fields (top_k <= num_experts, moe_layers within num_layers).
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.ignored_auth,
]


def test_no_server_error_and_every_response_matches_the_schema(deployment):
    # A database and queue of its own: the fuzz's runs land nowhere another test counts.
    app = create_app()
    # with the token set, as the schema's security says: schemathesis also checks that a
    # wrong token is refused
    own = deployment(api_token=SecretStr(TOKEN))
    app.dependency_overrides[get_settings] = lambda: own
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    for operation, mode in itertools.product(operations, GenerationMode):
        # positive cases follow the schema; negative ones break it (wrong types, out of
        # range, unknown fields), which must be a 4xx, never a 5xx

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same cases every run: CI fails on a change, not on luck
            database=None,
        )
        def fuzz(case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)

        try:
            fuzz()
        except Unsatisfiable:
            # an operation without parameters or a body has nothing to break
            assert mode is GenerationMode.NEGATIVE, operation.label
