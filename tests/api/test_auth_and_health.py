"""The bearer-token guard and the health probes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import SecretStr

from tests.conftest import ROOT, make_client

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/conftest.py)


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
    assert response.json()["checks"]["broker"].startswith("error")

    no_db = service_settings.model_copy(
        update={"database_url": "postgresql+psycopg://root@127.0.0.1:1/none?connect_timeout=2"}
    )
    with make_client(no_db) as broken:
        response = broken.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("error")


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
    assert result.stdout.strip() == "['moe_core', 'moe_core.config', 'moe_core.criteria']"
