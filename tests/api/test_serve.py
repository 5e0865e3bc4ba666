"""`python -m api.serve`: uvicorn with its listening socket known as TCP, so that asyncio
turns TCP_NODELAY on for every connection that `--workers N` accepts."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import uvicorn.config

from api.serve import bind_tcp_socket


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
def test_serve_runs_the_app_with_two_workers(deployment, start_api):
    api = start_api(deployment(), workers=2, entry="api.serve")
    assert httpx.get(f"{api.url}/readyz").json()["status"] == "ok"
    assert "Started parent process" in api.output()
