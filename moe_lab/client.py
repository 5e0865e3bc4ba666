"""The Python client of the moe-lab API: one method per route, each returning parsed JSON.

    from moe_lab.client import Client

    api = Client()                                   # MOE_API_URL, MOE_API_TOKEN
    run = api.create_experiment({"name": "top2", "preset": "top2", "base_preset": "tiny"})
    for event in api.events(run["id"]):              # status, progress and epoch events
        ...
    api.verdict(run["id"])

Every failure is an `ApiError` whose str is one line: the status and what the API said
(`422 config.top_k: top_k (9) exceeds base.num_experts (8)`), or why the API could not be
reached. The `moe-lab` CLI (moe_lab.cli) is a thin layer over this class.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import EllipsisType
from typing import IO, Any

import httpx

from moe_lab.errors import ApiError, error_of
from moe_lab.events import Event, stream_events

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = frozenset({"succeeded", "failed", "cancelled"})

__all__ = ["DEFAULT_URL", "FINISHED", "ApiError", "Client", "Event"]


class Client:
    """The moe-lab API over HTTP.

    `base_url` and `token` default to MOE_API_URL (http://127.0.0.1:8000) and MOE_API_TOKEN.
    `http` may be any httpx.Client to send the requests through (starlette's TestClient of
    the app, say); without one the client makes its own on `base_url`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        http: httpx.Client | None = None,
        timeout: float = 30.0,
        retries: int = 2,
    ) -> None:
        if http is not None and base_url is None:
            base_url = str(http.base_url).rstrip("/")
        self.base_url = (base_url or os.environ.get("MOE_API_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("MOE_API_TOKEN") or None
        self.http = http or httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=5.0)
        )
        self.retries = retries

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    def url(self, path: str) -> str:
        """`path` against the base URL (an injected client may have another base)."""
        return f"{self.base_url}{path}"

    def unreachable(self, exc: Exception) -> ApiError:
        reason = str(exc) or type(exc).__name__
        return ApiError(None, f"cannot reach the API at {self.base_url}: {reason}")

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        retry: bool | None = None,
    ) -> httpx.Response:
        """Send one request; a status >= 400 is an ApiError. Requests that are safe to
        repeat (GET, DELETE, a POST with an Idempotency-Key: `retry`) are sent again after
        a dropped connection or a 503 (the database restarting); a refused connection is
        reported at once."""
        if retry is None:
            retry = method in ("GET", "HEAD", "DELETE")
        params = {k: v for k, v in (params or {}).items() if v is not None}
        attempt = 0
        while True:
            try:
                response = self.http.request(
                    method,
                    self.url(path),
                    params=params,
                    json=json_body,
                    headers=self.headers(headers),
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise self.unreachable(exc) from exc
            except httpx.TransportError as exc:
                if not retry or attempt >= self.retries:
                    raise self.unreachable(exc) from exc
                time.sleep(0.5 * 2**attempt)
                attempt += 1
                continue
            if response.status_code == 503 and retry and attempt < self.retries:
                time.sleep(min(float(response.headers.get("Retry-After", 1) or 1), 5.0))
                attempt += 1
                continue
            if response.status_code >= 400:
                raise error_of(response)
            return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(response.status_code, f"not JSON from {path}: {exc}") from exc

    # ------------------------------------------------------------------ health, presets

    def health(self) -> dict:
        return self._json("GET", "/healthz")

    def ready(self) -> dict:
        """GET /readyz; a 503 (database or broker down) is an ApiError naming which."""
        return self._json("GET", "/readyz", retry=False)

    def presets(self) -> dict:
        return self._json("GET", "/presets")

    # ------------------------------------------------------------------ experiments

    def create_experiment(
        self,
        body: Mapping[str, Any],
        *,
        dry_run: bool = False,
        idempotency_key: str | None = None,
    ) -> dict:
        """POST /experiments: the stored run (queued), or with dry_run its plan. An
        Idempotency-Key is always sent (a new uuid4 unless given), so a retry after a
        dropped connection returns the same run rather than making a second one."""
        return self._json(
            "POST",
            "/experiments",
            params={"dry_run": "true"} if dry_run else None,
            json_body=dict(body),
            headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
            retry=True,
        )

    def list_experiments(
        self,
        *,
        status: str | None = None,
        name: str | None = None,
        tag: str | None = None,
        study_id: int | None = None,
        preset: str | None = None,
        dense: bool | None = None,
        order: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict:
        """GET /experiments: `{"items": [...], "total": n}`; only the filters given are sent."""
        params = {
            "status": status,
            "name": name,
            "tag": tag,
            "study_id": study_id,
            "preset": preset,
            "dense": None if dense is None else str(dense).lower(),
            "order": order,
            "limit": limit,
            "offset": offset,
        }
        return self._json("GET", "/experiments", params=params)

    def experiment(self, experiment_id: int) -> dict:
        return self._json("GET", f"/experiments/{experiment_id}")

    def metrics(self, experiment_id: int) -> dict:
        return self._json("GET", f"/experiments/{experiment_id}/metrics")

    def steps(self, experiment_id: int, after_step: int | None = None) -> dict:
        """The run's step points: {experiment_id, every, points} (the points after
        `after_step`, when given)."""
        params = {"after_step": after_step} if after_step is not None else None
        return self._json("GET", f"/experiments/{experiment_id}/steps", params=params)

    def result(self, experiment_id: int) -> dict:
        return self._json("GET", f"/experiments/{experiment_id}/result")

    def verdict(self, experiment_id: int) -> dict:
        return self._json("GET", f"/experiments/{experiment_id}/verdict")

    def update(
        self,
        experiment_id: int,
        *,
        add_tags: Sequence[str] = (),
        remove_tags: Sequence[str] = (),
        note: str | None | EllipsisType = ...,
    ) -> dict:
        """PATCH /experiments/{id}: add and remove tags, set the note (None clears it; left
        out, it stays). The run as it is now. Safe to retry: the same change twice is one."""
        body: dict[str, Any] = {}
        if add_tags or remove_tags:
            body["tags"] = {"add": list(add_tags), "remove": list(remove_tags)}
        if note is not ...:
            body["note"] = note
        return self._json("PATCH", f"/experiments/{experiment_id}", json_body=body, retry=True)

    def cancel(self, experiment_id: int) -> dict:
        return self._json("POST", f"/experiments/{experiment_id}/cancel", retry=True)

    def delete_experiment(self, experiment_id: int) -> None:
        self._json("DELETE", f"/experiments/{experiment_id}")

    def logs(self, experiment_id: int, offset: int = 0) -> tuple[str, int]:
        """The run's log from byte `offset`, and the offset to ask for next."""
        response = self.request(
            "GET", f"/experiments/{experiment_id}/logs", params={"offset": offset}
        )
        next_offset = response.headers.get("X-Log-Offset")
        text = response.content.decode("utf-8", "replace")
        return text, int(next_offset) if next_offset else offset + len(response.content)

    def events(self, experiment_id: int, *, last_event_id: str | None = None) -> Iterator[Event]:
        """The run's event stream (status, progress, epoch), resumed with Last-Event-ID after
        a dropped connection; it ends after a status event of a finished run."""
        return stream_events(self, f"/experiments/{experiment_id}/events", last_event_id)

    def artifacts(self, experiment_id: int) -> dict:
        return self._json("GET", f"/experiments/{experiment_id}/artifacts")

    def download(self, experiment_id: int, name: str, dest: Path | str | IO[bytes]) -> int:
        """Stream artifact `name` to `dest` (a path, or a binary file); returns its bytes."""
        return self._download(f"/experiments/{experiment_id}/artifacts/{name}", dest)

    # ------------------------------------------------------------------ studies

    def create_study(
        self,
        body: Mapping[str, Any],
        *,
        dry_run: bool = False,
        idempotency_key: str | None = None,
    ) -> dict:
        return self._json(
            "POST",
            "/studies",
            params={"dry_run": "true"} if dry_run else None,
            json_body=dict(body),
            headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
            retry=True,
        )

    def list_studies(self, *, limit: int | None = None, offset: int | None = None) -> dict:
        return self._json("GET", "/studies", params={"limit": limit, "offset": offset})

    def study(self, study_id: int) -> dict:
        return self._json("GET", f"/studies/{study_id}")

    def delete_study(self, study_id: int) -> None:
        self._json("DELETE", f"/studies/{study_id}")

    def study_artifacts(self, study_id: int) -> dict:
        return self._json("GET", f"/studies/{study_id}/artifacts")

    def download_study(self, study_id: int, name: str, dest: Path | str | IO[bytes]) -> int:
        return self._download(f"/studies/{study_id}/artifacts/{name}", dest)

    # ------------------------------------------------------------------ sweeps

    def create_sweep(
        self,
        body: Mapping[str, Any],
        *,
        dry_run: bool = False,
        idempotency_key: str | None = None,
    ) -> dict:
        """POST /sweeps, sent again after a dropped connection or a 503: the Idempotency-Key
        (a new uuid4 unless given) makes a retry return the sweep the first stored."""
        return self._json(
            "POST",
            "/sweeps",
            params={"dry_run": "true"} if dry_run else None,
            json_body=dict(body),
            headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
            retry=True,
        )

    def list_sweeps(self, *, limit: int | None = None, offset: int | None = None) -> dict:
        return self._json("GET", "/sweeps", params={"limit": limit, "offset": offset})

    def sweep(self, sweep_id: int) -> dict:
        return self._json("GET", f"/sweeps/{sweep_id}")

    def cancel_sweep(self, sweep_id: int) -> dict:
        return self._json("POST", f"/sweeps/{sweep_id}/cancel")

    def delete_sweep(self, sweep_id: int) -> None:
        self._json("DELETE", f"/sweeps/{sweep_id}")

    # ------------------------------------------------------------------ files

    def _download(self, path: str, dest: Path | str | IO[bytes]) -> int:
        if isinstance(dest, str | Path):
            target = Path(dest)
            partial = target.with_name(target.name + ".part")
            try:
                with open(partial, "wb") as out:
                    size = self._download(path, out)
                partial.replace(target)  # never a half-written file under the real name
            finally:
                partial.unlink(missing_ok=True)
            return size
        size = 0
        try:
            with self.http.stream(
                "GET", self.url(path), headers=self.headers({"Accept": "*/*"})
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_of(response)
                for chunk in response.iter_bytes(1 << 16):
                    dest.write(chunk)
                    size += len(chunk)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc
        return size
