"""A run's event stream (GET /experiments/{id}/events, text/event-stream), read with httpx.

Events: `status` (`{"status", "error", "current_epoch"}`), `progress` (the run's progress
object) and `epoch` (one epoch's metrics, as in /metrics). Each carries an id; a dropped
connection is reopened with `Last-Event-ID` so nothing is missed or repeated, and the
stream ends after the status event of a finished run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from moe_lab.errors import ApiError, error_of

if TYPE_CHECKING:
    from moe_lab.client import Client

FINISHED = frozenset({"succeeded", "failed", "cancelled"})

# The server sends a keep-alive comment now and then; this long without a byte, the
# connection is taken for dead and reopened.
READ_TIMEOUT = 60.0
# How long to keep reopening a stream that will not come back before giving up.
GIVE_UP_AFTER = 60.0


@dataclass(frozen=True)
class Event:
    event: str  # "status" | "progress" | "epoch" (or "message", SSE's default)
    data: Any  # the data as JSON, or the text when it is not JSON
    id: str | None = None

    @property
    def finished(self) -> bool:
        """A status event saying the run has ended: the last of the stream."""
        return (
            self.event == "status"
            and isinstance(self.data, dict)
            and self.data.get("status") in FINISHED
        )


@dataclass
class _Pending:
    """Fields of the event being read, dispatched at a blank line."""

    event: str = ""
    data: list[str] | None = None
    retry_ms: int | None = None


def parse_sse(lines: Iterable[str], on_retry: Any = None) -> Iterator[Event]:
    """Events from the lines of a text/event-stream, as the HTML spec reads them: fields
    `event`, `data` (several lines joined by newlines), `id` and `retry`; lines starting with
    `:` are comments (keep-alives); a blank line ends an event; an event without data is
    dropped. `id` persists from event to event, as the spec's last event id does."""
    pending = _Pending()
    last_id: str | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if pending.data is not None:
                text = "\n".join(pending.data)
                try:
                    data: Any = json.loads(text)
                except ValueError:
                    data = text
                yield Event(pending.event or "message", data, last_id)
            pending = _Pending()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            pending.event = value
        elif name == "data":
            pending.data = [*(pending.data or []), value]
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isdigit() and on_retry is not None:
            on_retry(int(value))


def stream_events(
    client: Client,
    path: str,
    last_event_id: str | None = None,
    *,
    give_up_after: float = GIVE_UP_AFTER,
    read_timeout: float = READ_TIMEOUT,
) -> Iterator[Event]:
    """The events at `path`, reconnecting after a dropped connection (or a stream that ends
    before the run has) with the id of the last event seen. Gives up, with an ApiError,
    after `give_up_after` seconds without a connection; an error status other than a 503
    is raised at once."""
    delay = 0.5
    last_contact = time.monotonic()
    retry_ms: list[int] = []
    while True:
        headers = client.headers({"Accept": "text/event-stream", "Cache-Control": "no-cache"})
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        failure: Exception | None = None
        try:
            with client.http.stream(
                "GET",
                client.url(path),
                headers=headers,
                timeout=httpx.Timeout(10.0, read=read_timeout),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    if response.status_code != 503:
                        raise error_of(response)
                    failure = error_of(response)
                else:
                    last_contact = time.monotonic()
                    delay = 0.5
                    for event in parse_sse(response.iter_lines(), on_retry=retry_ms.append):
                        last_contact = time.monotonic()
                        if event.id is not None:
                            last_event_id = event.id
                        yield event
                        if event.finished:
                            return
        except httpx.TransportError as exc:  # refused, reset, timed out: try again
            failure = exc
        if time.monotonic() - last_contact > give_up_after:
            if isinstance(failure, ApiError):
                raise failure
            reason = str(failure) if failure else "the stream kept ending before the run did"
            raise ApiError(
                None,
                f"lost the event stream of {client.base_url}{path} for over "
                f"{give_up_after:g} s: {reason or type(failure).__name__}",
            )
        time.sleep(retry_ms[-1] / 1000 if retry_ms else delay)
        delay = min(delay * 2, 5.0)
