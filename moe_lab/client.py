"""The Python client of the moe-lab API: one method per route, each returning parsed JSON.

    from moe_lab.client import Client

    api = Client()                                   # MOE_API_URL, MOE_API_TOKEN, moe-lab login
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
from urllib.parse import quote

import httpx

from moe_lab import credentials
from moe_lab.errors import ApiError, error_of
from moe_lab.events import Event, stream_events

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = frozenset({"succeeded", "failed", "cancelled"})

__all__ = ["DEFAULT_URL", "FINISHED", "ApiError", "Client", "Event"]


def segment(text: str) -> str:
    """`text` as one path segment: a name given on a command line (`--user ../x`) names a
    user, never another route (dots alone are encoded too, or they would be a step up)."""
    quoted = quote(text, safe="")
    return quoted.replace(".", "%2E") if not quoted.strip(".") else quoted


class Client:
    """The moe-lab API over HTTP.

    `base_url` defaults to MOE_API_URL, else the URL `moe-lab login` kept, else
    http://127.0.0.1:8000. `token` defaults to MOE_API_TOKEN, else the token `moe-lab login`
    kept (moe_lab.credentials), if it was kept for this same URL: a client pointed at another
    API sends it nothing. `token=""` sends none. `token_source` says where the token came
    from ("argument", "MOE_API_TOKEN", the login file's path), or None. `http` may be any
    httpx.Client to send the requests through (starlette's TestClient of the app, say);
    without one the client makes its own on `base_url`. A login file that cannot be used
    is a credentials.LoginFileError.
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
        base_url = base_url or os.environ.get("MOE_API_URL")
        env_token = os.environ.get("MOE_API_TOKEN") or None
        # the file is read only when it has something to say
        saved = None if base_url and (token is not None or env_token) else credentials.load()
        self.base_url = (base_url or (saved and saved.url) or DEFAULT_URL).rstrip("/")
        self.token_source: str | None = None
        if token is not None:
            self.token = token or None
            self.token_source = "argument" if token else None
        elif env_token:
            self.token, self.token_source = env_token, "MOE_API_TOKEN"
        elif saved is not None and saved.url == self.base_url:
            self.token, self.token_source = saved.token, str(credentials.config_path())
        else:
            self.token = None
        self.http = http or httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0))
        )
        self.retries = retries

    def with_token(self, token: str) -> Client:
        """A client of the same API, through the same connection, as `token`'s user."""
        return Client(self.base_url, token=token, http=self.http, retries=self.retries)

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
        owner: str | None = None,
        order: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict:
        """GET /experiments: `{"items": [...], "total": n}`; only the filters given are sent.
        `owner`: "me" (whoever the token says) or a user's name."""
        params = {
            "owner": owner,
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
        priority: int | None = None,
    ) -> dict:
        """PATCH /experiments/{id}: add and remove tags, set the note (None clears it; left
        out, it stays), set its priority in the queue (admins; higher goes first). The run
        as it is now. Safe to retry: the same change twice is one."""
        body: dict[str, Any] = {}
        if add_tags or remove_tags:
            body["tags"] = {"add": list(add_tags), "remove": list(remove_tags)}
        if note is not ...:
            body["note"] = note
        if priority is not None:
            body["priority"] = priority
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

    def list_studies(
        self, *, owner: str | None = None, limit: int | None = None, offset: int | None = None
    ) -> dict:
        """GET /studies, newest first; `owner`: "me" or a user's name."""
        params = {"owner": owner, "limit": limit, "offset": offset}
        return self._json("GET", "/studies", params=params)

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

    def list_sweeps(
        self, *, owner: str | None = None, limit: int | None = None, offset: int | None = None
    ) -> dict:
        """GET /sweeps, newest first; `owner`: "me" or a user's name."""
        params = {"owner": owner, "limit": limit, "offset": offset}
        return self._json("GET", "/sweeps", params=params)

    def sweep(self, sweep_id: int) -> dict:
        return self._json("GET", f"/sweeps/{sweep_id}")

    def cancel_sweep(self, sweep_id: int) -> dict:
        return self._json("POST", f"/sweeps/{sweep_id}/cancel")

    def delete_sweep(self, sweep_id: int) -> None:
        self._json("DELETE", f"/sweeps/{sweep_id}")

    # ------------------------------------------------------------------ users, tokens, audit

    def me(self) -> dict:
        """GET /users/me: who the token says this client is, their role, quotas and usage."""
        return self._json("GET", "/users/me")

    def users(self) -> dict:
        """GET /users (admins): `{"items": [...], "total": n}`."""
        return self._json("GET", "/users")

    def user(self, name: str) -> dict:
        return self._json("GET", f"/users/{segment(name)}")

    def create_user(
        self,
        name: str,
        role: str,
        *,
        max_queued_runs: int | None = None,
        max_gpus: int | None = None,
    ) -> dict:
        """POST /users (admins); quotas left out are the deployment's. Not retried: a
        second try of one that arrived would be a 409."""
        body: dict[str, Any] = {"name": name, "role": role}
        if max_queued_runs is not None:
            body["max_queued_runs"] = max_queued_runs
        if max_gpus is not None:
            body["max_gpus"] = max_gpus
        return self._json("POST", "/users", json_body=body)

    def update_user(
        self,
        name: str,
        *,
        role: str | None = None,
        disabled: bool | None = None,
        max_queued_runs: int | None | EllipsisType = ...,
        max_gpus: int | None | EllipsisType = ...,
    ) -> dict:
        """PATCH /users/{name} (admins): what is given changes; a quota of None is the
        deployment's again (left out, it stays). Disabling refuses the user's tokens from
        their next request."""
        body: dict[str, Any] = {}
        if role is not None:
            body["role"] = role
        if disabled is not None:
            body["disabled"] = disabled
        if max_queued_runs is not ...:
            body["max_queued_runs"] = max_queued_runs
        if max_gpus is not ...:
            body["max_gpus"] = max_gpus
        return self._json("PATCH", f"/users/{segment(name)}", json_body=body, retry=True)

    def _user_or_me(self, user: str | None) -> str:
        return segment(user if user is not None else self.me()["name"])

    def create_token(
        self, name: str, *, user: str | None = None, expires_in_days: int | None = None
    ) -> dict:
        """POST /users/{user}/tokens (yours unless `user`; another's: admins): the token's
        record with its secret in `token`, which the API shows this once."""
        body: dict[str, Any] = {"name": name}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        return self._json("POST", f"/users/{self._user_or_me(user)}/tokens", json_body=body)

    def tokens(self, *, user: str | None = None) -> dict:
        """GET /users/{user}/tokens (yours unless `user`): revoked ones too, never a secret."""
        return self._json("GET", f"/users/{self._user_or_me(user)}/tokens")

    def revoke_token(self, token_id: int, *, user: str | None = None) -> None:
        """DELETE /users/{user}/tokens/{id}: refused from its next request on."""
        self._json("DELETE", f"/users/{self._user_or_me(user)}/tokens/{token_id}")

    def audit(self, *, limit: int | None = None, offset: int | None = None) -> dict:
        """GET /audit (admins): every change, newest first: who, when, what."""
        return self._json("GET", "/audit", params={"limit": limit, "offset": offset})

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
