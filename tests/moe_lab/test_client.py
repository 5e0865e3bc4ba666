"""The client's own parts: errors as one line, the SSE reader, and resuming a dropped event
stream with Last-Event-ID against a real socket server that drops the connection."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from local_deployment.servers import free_port
from moe_lab.client import ApiError, Client
from moe_lab.errors import describe_detail
from moe_lab.events import Event, parse_sse, stream_events


def test_an_error_detail_is_one_line():
    assert describe_detail("experiment 9 not found") == "experiment 9 not found"
    assert describe_detail("two\n  lines") == "two lines"
    detail = [
        {"loc": ["body", "config", "top_k"], "msg": "top_k (9) exceeds base.num_experts (8)",
         "type": "value_error", "input": 9},
        {"loc": ["query", "limit"], "msg": "Input should be less than or equal to 500",
         "type": "less_than_equal", "input": "900"},
        {"loc": ["body"], "msg": "Field required", "type": "missing", "input": None},
    ]  # fmt: skip
    assert describe_detail(detail) == (
        "config.top_k: top_k (9) exceeds base.num_experts (8); "
        'limit: Input should be less than or equal to 500 (got "900"); Field required'
    )
    assert str(ApiError(422, "config.top_k: bad")) == "422 config.top_k: bad"
    assert str(ApiError(None, "cannot reach the API at http://x: refused")).startswith("cannot")


def test_the_sse_reader_follows_the_format():
    text = (
        ": a keep-alive comment\n\n"
        'event: status\nid: 1\ndata: {"status": "running"}\n\n'
        'event: progress\r\ndata: {"step": 3,\r\ndata:  "epoch": 1}\r\n\r\n'  # CRLF, 2 lines
        "data: not json\n\n"  # no event name: "message"; no id: the last one stays
        "event: nothing\n\n"  # no data: not dispatched
        'id: 7\nevent: epoch\ndata:{"epoch": 1}\n\n'
        "event: unterminated\ndata: {}\n"  # the stream ended before the blank line
    )
    retries: list[int] = []
    events = list(parse_sse(text.splitlines(keepends=True) + ["retry: 250\n"], retries.append))
    assert events == [
        Event("status", {"status": "running"}, "1"),
        Event("progress", {"step": 3, "epoch": 1}, "1"),
        Event("message", "not json", "1"),
        Event("epoch", {"epoch": 1}, "7"),
    ]
    assert retries == [250]
    assert Event("status", {"status": "failed"}).finished
    assert not Event("status", {"status": "running"}).finished
    assert not Event("epoch", {"status": "failed"}).finished


class FlakyServer:
    """A raw HTTP server on a real socket: each connection gets what `script(last_event_id)`
    returns (status, body, drop), sent chunked; `drop` cuts the connection in the middle of
    the body, as a restarting proxy or API does, and None hangs up without an answer."""

    def __init__(self, script: Callable[[str | None], tuple[int, str, bool]]) -> None:
        self.script = script
        self.seen: list[str | None] = []  # Last-Event-ID of each request
        self.requests: list[tuple[str, dict[str, str]]] = []  # request line, headers
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                head, _, body = request.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {
                    k.lower(): v
                    for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)
                }
                # read the whole body: closing a socket with unread bytes sends a reset
                # instead of a clean close, and the client would see that, not the answer
                while len(body) < int(headers.get("content-length", 0)):
                    body += conn.recv(4096)
                self.requests.append((lines[0], headers))
                last = headers.get("last-event-id")
                self.seen.append(last)
                answer = self.script(last)
                if answer is None:  # hang up without an answer
                    continue
                status, body, drop = answer
                kind = "text/event-stream" if status == 200 else "application/json"
                conn.sendall(
                    f"HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\n"
                    "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
                )
                data = body.encode()
                conn.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                if not drop:
                    conn.sendall(b"0\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture()
def flaky() -> Iterator[Callable[..., FlakyServer]]:
    servers: list[FlakyServer] = []

    def make(script) -> FlakyServer:
        servers.append(FlakyServer(script))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def sse(event: str, data: dict, id_: int) -> str:
    return f"event: {event}\nid: {id_}\ndata: {json.dumps(data)}\n\n"


def test_a_dropped_stream_resumes_after_the_last_event_id(flaky):
    def script(last: str | None) -> tuple[int, str, bool]:
        if last is None:  # the first connection dies after two events
            body = sse("status", {"status": "running"}, 1) + sse("epoch", {"epoch": 1}, 2)
            return 200, body, True
        if last == "2":  # the next one ends cleanly, but before the run does
            return 200, ": keep-alive\n\n" + sse("epoch", {"epoch": 2}, 3), False
        assert last == "3"
        return 200, sse("status", {"status": "succeeded"}, 4) + sse("epoch", {"epoch": 9}, 5), False

    server = flaky(script)
    client = Client(server.url)
    events = list(client.events(12))
    assert [(e.event, e.id) for e in events] == [
        ("status", "1"), ("epoch", "2"), ("epoch", "3"), ("status", "4")
    ]  # fmt: skip
    assert events[-1].data == {"status": "succeeded"}  # and nothing read after it
    assert server.seen == [None, "2", "3"]


def test_a_missing_run_is_an_error_at_once_and_a_dead_server_after_a_while(flaky):
    server = flaky(lambda last: (404, json.dumps({"detail": "experiment 12 not found"}), False))
    with pytest.raises(ApiError) as caught:
        next(iter(Client(server.url).events(12)))
    assert str(caught.value) == "404 experiment 12 not found"
    assert server.seen == [None]

    port = free_port()
    nowhere = Client(f"http://127.0.0.1:{port}")
    with pytest.raises(ApiError) as caught:
        list(stream_events(nowhere, "/experiments/1/events", give_up_after=0.3))
    assert caught.value.status is None
    assert str(caught.value).startswith(
        f"lost the event stream of http://127.0.0.1:{port}/experiments/1/events for over 0.3 s: "
    )


def test_a_submit_is_sent_again_with_the_same_idempotency_key(flaky):
    answers = iter([
        None,  # the connection dies before an answer: did the API store it? maybe
        (503, json.dumps({"detail": "the database is unreachable; retry shortly"}), False),
        (201, json.dumps({"id": 5, "status": "queued"}), False),
    ])  # fmt: skip
    server = flaky(lambda last: next(answers))
    run = Client(server.url, retries=2).create_experiment({"name": "x"})
    assert run == {"id": 5, "status": "queued"}
    assert [line for line, _ in server.requests] == ["POST /experiments HTTP/1.1"] * 3
    keys = {headers["idempotency-key"] for _, headers in server.requests}
    assert len(keys) == 1 and len(keys.pop()) == 36  # one uuid4, sent each time

    # a GET is sent again too, `retries` times, and then the failure is one line
    server = flaky(lambda last: None)
    with pytest.raises(ApiError) as caught:
        Client(server.url, retries=1).experiment(1)
    assert caught.value.status is None and "cannot reach the API" in str(caught.value)
    assert len(server.requests) == 2
