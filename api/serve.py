"""`python -m api.serve api.main:app [uvicorn's options]`: uvicorn's own command line, with
one fix, for `--workers N`.

With several workers uvicorn binds the listening socket itself, without a protocol number,
and asyncio turns TCP_NODELAY on only for accepted sockets whose protocol is TCP: every
response is then sent under Nagle's algorithm, and one written in two sends (headers, then
body) waits for the client's delayed ACK, about 40 ms on Linux per keep-alive request
(Kludex/uvicorn#3149, open as of uvicorn 0.54). `python -m benchmarks service` measured a
GET at p50 44 ms as deployed against 2.9 ms with the socket fixed. Here the socket is
rebound as a TCP socket before the workers start; everything else is uvicorn's.
"""

from __future__ import annotations

import socket
import sys

import uvicorn.config
from uvicorn.main import main

_bind_socket = uvicorn.config.Config.bind_socket


def bind_tcp_socket(self: uvicorn.config.Config) -> socket.socket:
    sock = _bind_socket(self)
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        # The same socket (bound, listening state kept), now known to be TCP.
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    return sock


def run(argv: list[str] | None = None) -> None:
    uvicorn.config.Config.bind_socket = bind_tcp_socket  # type: ignore[method-assign]  # the fix above; uvicorn has no hook
    main(args=argv if argv is not None else sys.argv[1:], prog_name="python -m api.serve")


if __name__ == "__main__":
    run()
