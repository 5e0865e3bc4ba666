"""`python -m api.serve`: uvicorn with its listening socket known as TCP, so that asyncio
turns TCP_NODELAY on for every connection that `--workers N` accepts."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import httpx
import pytest
import uvicorn.config

from api.serve import bind_tcp_socket
from tests.environment import ROOT
from tests.processes import settings_env


def _nodelay_of_accepted(sock: socket.socket) -> int:
    """TCP_NODELAY on a connection that asyncio accepts on `sock` (as uvicorn's workers do)."""

    async def check() -> int:
        seen = asyncio.get_running_loop().create_future()

        async def handle(reader, writer) -> None:
            raw = writer.get_extra_info("socket")
            seen.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(seen, 5)
            writer.close()
            return value

    return asyncio.run(check())


def test_accepted_connections_get_nodelay_only_through_the_fix():
    config = uvicorn.config.Config("api.main:app", host="127.0.0.1", port=0)
    plain = uvicorn.config.Config.bind_socket(config)
    assert plain.proto == 0
    assert _nodelay_of_accepted(plain) == 0  # the bug: Nagle's algorithm on every response
    fixed = bind_tcp_socket(config)
    assert fixed.proto == socket.IPPROTO_TCP
    assert _nodelay_of_accepted(fixed) != 0


@pytest.mark.services
def test_serve_runs_the_app_with_two_workers(deployment, tmp_path):
    settings = deployment()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "serve.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "api.serve", "api.main:app", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "2"],
        cwd=ROOT, env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                break
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["status"] == "ok"
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
    assert "Started parent process" in (tmp_path / "serve.log").read_text()
