"""The few Label Studio REST calls the review loop makes (projects, uploads, tasks, annotations).

Plain HTTP through ``requests``: the server may be remote, and the calls are the documented API
of Label Studio 1.x (``/api/projects``, ``/api/projects/{id}/import``, ``/api/tasks``). The key
is read from ``LABEL_STUDIO_API_KEY`` by the caller and sent in a header, never logged or written.
A legacy token goes as ``Token <key>``; a personal access token (a JWT refresh token) is first
exchanged for an access token (``/api/token/refresh/``) and sent as ``Bearer``.

Every failure the user can fix (server down, key refused, project missing, a refused request)
is a :class:`ReviewError` with one line saying which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

KEY_VARIABLE = "LABEL_STUDIO_API_KEY"
TIMEOUT_S = 30.0
PAGE_SIZE = 100


class ReviewError(ValueError):
    """A user error of the review commands (server, key, project, annotations): one line."""


def _requests() -> Any:
    try:
        import requests
    except ImportError as exc:  # pragma: no cover - requests comes with ray[default]
        raise ReviewError("the review commands need `requests`: pip install 'ray-wsis[review]'") from exc
    return requests


@dataclass
class LabelStudio:
    """A Label Studio server at ``url`` with an API key."""

    url: str
    key: str
    _auth: Optional[str] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ReviewError(f"--url {self.url!r} is not an http(s) URL")
        if not self.key:
            raise ReviewError(f"no API key: set {KEY_VARIABLE} (Label Studio: Account & Settings > Access Token)")

    # ------------------------------------------------------------------ transport
    def _authorization(self) -> str:
        if self._auth is None:
            if self.key.count(".") == 2:  # a personal access token: a JWT refresh token
                body = self._send("POST", "/api/token/refresh/", json={"refresh": self.key}, auth="")
                self._auth = f"Bearer {body['access']}"
            else:
                self._auth = f"Token {self.key}"
        return self._auth

    def _send(self, method: str, path: str, auth: Optional[str] = None, **kwargs: Any) -> Any:
        requests = _requests()
        headers = {"Authorization": self._authorization() if auth is None else auth} if auth != "" else {}
        try:
            response = requests.request(method, self.url + path, headers=headers, timeout=TIMEOUT_S, **kwargs)
        except requests.exceptions.ConnectionError:
            raise ReviewError(
                f"Label Studio at {self.url} cannot be reached (is it running? is --url right?)"
            ) from None
        except requests.exceptions.Timeout:
            raise ReviewError(f"Label Studio at {self.url} did not answer in {TIMEOUT_S:.0f} s") from None
        if response.status_code in (401, 403):
            raise ReviewError(
                f"Label Studio at {self.url} refused the API key in {KEY_VARIABLE} "
                f"(HTTP {response.status_code}: {_detail(response)})"
            )
        if response.status_code >= 400:
            raise ReviewError(f"Label Studio {method} {path} failed: HTTP {response.status_code}: {_detail(response)}")
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self._send("GET", path, params=params)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self._send("POST", path, **kwargs)

    # ------------------------------------------------------------------ calls
    def whoami(self) -> dict[str, Any]:
        """The key's user (checks the server and the key before anything else)."""
        user: dict[str, Any] = self.get("/api/current-user/whoami")
        return user

    def projects(self) -> list[dict[str, Any]]:
        return self._pages("/api/projects/")

    def project(self, project_id: int) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self.get(f"/api/projects/{project_id}/")
        except ReviewError as exc:
            if "HTTP 404" in str(exc):
                raise ReviewError(f"Label Studio at {self.url} has no project {project_id} (deleted?)") from None
            raise
        return found

    def create_project(self, title: str, label_config: str) -> dict[str, Any]:
        created: dict[str, Any] = self.post("/api/projects/", json={"title": title, "label_config": label_config})
        return created

    def upload(self, project_id: int, name: str, data: bytes) -> str:
        """Upload one file to the project without making a task of it; its URL on the server."""
        body = self.post(
            f"/api/projects/{project_id}/import", params={"commit_to_project": "false"}, files={name: (name, data)}
        )
        ids = body.get("file_upload_ids") or []
        if len(ids) != 1:
            raise ReviewError(f"Label Studio took {name} but returned {len(ids)} file uploads")
        upload: dict[str, Any] = self.get(f"/api/import/file-upload/{ids[0]}")
        return str(upload["file"])

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> None:
        self.post(f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=tasks)

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its data, annotations and predictions."""
        return self._pages("/api/tasks/", project=project_id, fields="all")

    def _pages(self, path: str, **params: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            try:
                body = self.get(path, page=page, page_size=PAGE_SIZE, **params)
            except ReviewError as exc:
                if page > 1 and "HTTP 404" in str(exc):  # past the last page
                    return out
                raise
            items = body if isinstance(body, list) else body.get("results", body.get("tasks", []))
            out += items
            total = None if isinstance(body, list) else body.get("count", body.get("total"))
            if isinstance(body, list) or not items or (total is not None and len(out) >= int(total)):
                return out
            page += 1


def _detail(response: Any) -> str:
    """The server's reason, on one line."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200] or response.reason
    if isinstance(body, dict):
        for key in ("detail", "validation_errors", "message", "error"):
            if key in body:
                return " ".join(str(body[key]).split())[:200]
    return " ".join(str(body).split())[:200]
