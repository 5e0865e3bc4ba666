"""Shared fixtures, one module per concern (each module's docstring says more):

- tests/fixtures/data.py: the generated corpus and the session's tokenizer cache;
- tests/fixtures/services.py: the machine's Postgres and Redis (MOE_TEST_POSTGRES_URL,
  MOE_TEST_REDIS_URL), stores migrated on them, deployments, the API in-process;
- tests/fixtures/processes.py: real workers and API servers (local_deployment.processes,
  which the benchmarks use too);
- tests/fixtures/browser.py: chromium through Playwright, a page that fails on script
  errors and CSP violations, screenshots (docs/img/ with MOE_DOCS_SCREENSHOTS=1).

Helpers that tests import live beside them: tests/client.py (calling the API),
tests/factories.py (test data), tests/waiting.py, tests/environment.py; free ports and
throwaway Redis, Postgres and MLflow servers come from local_deployment.servers. A
directory's own conftest.py adds what only its tests use (tests/moe_core, tests/moe_lab).
"""

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.services",
    "tests.fixtures.processes",
    "tests.fixtures.browser",
]
