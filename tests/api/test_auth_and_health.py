"""The bearer-token guard and the health probes."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from pydantic import SecretStr

from tests.client import make_client
from tests.environment import ROOT

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)


def test_token_guard(service_settings):
    settings = service_settings.model_copy(update={"api_token": SecretStr("s3cret")})
    with make_client(settings) as client:
        for method, path in [("get", "/experiments"), ("get", "/presets"), ("get", "/studies"),
                             ("post", "/experiments"), ("get", "/experiments/1/metrics")]:  # fmt: skip
            response = client.request(method, path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = client.get("/experiments", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        basic = client.get("/experiments", headers={"Authorization": "Basic czNjcmV0"})
        assert basic.status_code == 401
        ok = client.get("/experiments", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        # health checks stay open for load balancers and orchestrators
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_no_token_configured_means_open(client):
    assert client.get("/presets").status_code == 200


def test_readyz_checks_database_and_broker(client, service_settings):
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}

    no_broker = service_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with make_client(no_broker) as broken:
        response = broken.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "ok"
    assert response.json()["checks"]["broker"].startswith("unavailable: ")

    no_db = service_settings.model_copy(
        update={"database_url": "postgresql+psycopg://root@127.0.0.1:1/none?connect_timeout=2"}
    )
    with make_client(no_db) as broken:
        response = broken.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("unavailable: ")


def test_unreachable_broker_answers_503_and_stores_nothing(service_settings):
    settings = service_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with make_client(settings) as client:
        before = client.get("/experiments").json()["total"]
        studies_before = client.get("/studies").json()["total"]
        response = client.post("/experiments", json={"name": "lost", "base_preset": "micro"})
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert "nothing was stored" in response.json()["detail"]
        study = client.post("/studies", json={"name": "lost", "experiments": ["top2"]})
        assert study.status_code == 503
        # No run that no task will ever pick up, no study without its runs.
        assert client.get("/experiments").json()["total"] == before
        assert client.get("/studies").json()["total"] == studies_before


def test_the_api_never_imports_torch():
    code = (
        "import sys; import api.main, api.routes.experiments, api.verdicts; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "print(sorted(m for m in sys.modules if m.startswith('moe_core')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # the engine's torch-free modules only: each one the API image copies (Dockerfile)
    copied = next(line for line in (ROOT / "Dockerfile").read_text().splitlines()
                  if line.startswith("COPY moe_core/__init__.py"))  # fmt: skip
    image = {path.removesuffix(".py").replace("/", ".") for path in copied.split()[1:-1]}
    loaded = set(ast.literal_eval(result.stdout.strip()))
    assert loaded <= {name.removesuffix(".__init__") for name in image}, loaded
    assert {"moe_core.config", "moe_core.criteria", "moe_core.records"} <= loaded


def test_readyz_says_why_only_to_a_caller_with_the_token(service_settings):
    # an outage: the driver's error names the host and port, not for everyone's eyes
    settings = service_settings.model_copy(
        update={
            "api_token": SecretStr("s3cret"),
            "database_url": "postgresql+psycopg://root@127.0.0.1:1/none?connect_timeout=2",
        }
    )
    with make_client(settings) as client:
        anyone = client.get("/readyz")
        operator = client.get("/readyz", headers={"Authorization": "Bearer s3cret"})
    assert anyone.status_code == operator.status_code == 503
    assert anyone.json() == {
        "status": "unavailable",
        "checks": {"database": "unavailable", "broker": "ok"},
    }
    assert "127.0.0.1" not in anyone.text and "none" not in anyone.text
    told = operator.json()["checks"]["database"]
    assert told.startswith("unavailable: ") and "127.0.0.1" in told


def test_the_token_is_checked_before_any_redirect_or_routing(service_settings):
    settings = service_settings.model_copy(update={"api_token": SecretStr("s3cret")})
    token = {"Authorization": "Bearer s3cret"}
    with make_client(settings) as client:
        for method, path in [
            ("GET", "/experiments/1/artifacts/run.log/"),  # a trailing slash: a redirect
            ("GET", "/experiments/"),
            ("GET", "/studies/1/"),
            ("PUT", "/experiments/1"),  # a 405 with its Allow
            ("GET", "/experiments/1/nothing-here"),  # a 404
            ("GET", "/workers/"),
        ]:
            response = client.request(method, path, follow_redirects=False)
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer"
        # with the token, the router answers as before
        redirect = client.get("/experiments/", headers=token, follow_redirects=False)
        assert redirect.status_code == 307
        assert client.put("/experiments/1", headers=token).status_code == 405
        # what is open stays open
        assert client.get("/ui/").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/healthz").status_code == 200


def test_every_response_says_what_a_browser_may_do(client):
    for path, status in [
        ("/ui/", 200),
        ("/ui/app.js", 200),
        ("/ui/vendor/uplot/uPlot.iife.min.js", 200),
        ("/experiments", 200),
        ("/experiments/999999", 404),
        ("/experiments?limit=0", 422),
        ("/healthz", 200),
        ("/openapi.json", 200),
    ]:
        response = client.get(path)
        assert response.status_code == status, path
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
        assert "unsafe" not in policy, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path
    # Swagger UI starts from an inline script: allowed by its hash, and nothing else inline
    docs = client.get("/docs")
    policy = docs.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self' 'sha256-" in policy
    assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    assert docs.headers["x-content-type-options"] == "nosniff"
