"""One door to storage: local folders, S3 (and S3-compatible stores) and any fsspec URL.

Ray Data and Ray Train take a ``pyarrow.fs.FileSystem`` plus a path *without* scheme, so
:func:`resolve` returns exactly that pair. Small files (markers, metrics, checkpoints
exported as single files) go through the same filesystem object, written atomically:
a reader sees either the old file or the whole new one, never a partial write.
Credentials are read from the environment by the S3 clients; nothing here prints them.
"""

from __future__ import annotations

import os
import posixpath
import socket
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlparse

import pyarrow.fs as pafs

from ray_wsis.config import StorageConfig


class StorageError(RuntimeError):
    """Storage is unreachable, refuses our credentials, or a file is missing."""


@dataclass(frozen=True)
class Location:
    """A resolved URI: the filesystem object and the scheme-less path it understands."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def child(self, *parts: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, *parts), join(self.uri, *parts))


def is_remote(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return bool(scheme) and scheme != "file" and len(scheme) > 1  # 'C:' is a drive, not a scheme


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI or local path."""
    if is_remote(uri):
        return uri.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts if p)
    return os.path.join(uri, *parts)


def endpoint_url(storage: StorageConfig) -> str:
    return storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL", "")


def _s3_filesystem(storage: StorageConfig) -> pafs.S3FileSystem:
    endpoint = endpoint_url(storage)
    kwargs = dict(
        region=os.environ.get("AWS_DEFAULT_REGION", storage.region),
        connect_timeout=storage.connect_timeout_s,
        request_timeout=storage.request_timeout_s,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max(1, storage.retries)),
    )
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        kwargs["scheme"] = urlparse(endpoint).scheme or "http"
        kwargs["allow_bucket_creation"] = True
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs["access_key"] = key
        kwargs["secret_key"] = secret
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str, storage: Optional[StorageConfig] = None) -> Location:
    """Map a URI or local path to (pyarrow filesystem, scheme-less path)."""
    storage = storage or StorageConfig()
    if not uri:
        raise StorageError("empty path or URI")
    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a"):
        path = (parsed.netloc + parsed.path).rstrip("/")
        return Location(_s3_filesystem(storage), path, uri)
    if not is_remote(uri):
        local = uri[len("file://") :] if uri.startswith("file://") else uri
        return Location(pafs.LocalFileSystem(), os.path.abspath(local), os.path.abspath(local))
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        return Location(fs, path, uri)
    except (pafs.ArrowInvalid, ValueError, OSError):
        import fsspec  # any other fsspec protocol, wrapped for pyarrow

        fs_obj, path = fsspec.core.url_to_fs(uri)
        return Location(pafs.PyFileSystem(pafs.FSSpecHandler(fs_obj)), path, uri)


def fsspec_filesystem(uri: str, storage: Optional[StorageConfig] = None):
    """An fsspec filesystem (s3fs for S3) and path, for libraries that want fsspec."""
    import fsspec

    storage = storage or StorageConfig()
    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a"):
        import s3fs

        client_kwargs = {}
        endpoint = endpoint_url(storage)
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        fs = s3fs.S3FileSystem(
            client_kwargs=client_kwargs,
            config_kwargs={
                "connect_timeout": storage.connect_timeout_s,
                "read_timeout": storage.request_timeout_s,
                "retries": {"max_attempts": max(1, storage.retries)},
            },
        )
        return fs, (parsed.netloc + parsed.path).rstrip("/")
    return fsspec.core.url_to_fs(uri)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    for secret_var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(secret_var)
        if secret and secret in text:
            text = text.replace(secret, "***")
    return text.splitlines()[0] if text else type(exc).__name__


def _connects(host: str, port: int, timeout_s: float) -> Optional[str]:
    """None when a TCP connection to host:port opens within ``timeout_s``, name lookup included
    (it has no timeout of its own, so it runs in a thread); else why not, in a few words."""
    outcome: list[Optional[str]] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(None)
        except OSError as exc:
            outcome.append(exc.strerror or str(exc) or type(exc).__name__)

    thread = threading.Thread(target=probe, name="storage-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    return outcome[0] if outcome else f"no answer within {timeout_s:g} s"


def check_endpoint(storage: StorageConfig, uri: str, timeout_s: float = 3.0) -> None:
    """Fail within seconds when an S3 endpoint is down or AWS cannot be reached (no network, a
    typo'd host), instead of hanging in the SDK's DNS and connect retries."""
    if urlparse(uri).scheme not in ("s3", "s3a"):
        return
    endpoint = endpoint_url(storage)
    if endpoint:
        parsed = urlparse(endpoint)
        host = parsed.hostname or "localhost"
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    elif any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # the SDK goes through the proxy; a direct probe would say nothing
    else:
        host, port = f"s3.{os.environ.get('AWS_DEFAULT_REGION', storage.region)}.amazonaws.com", 443
    why = _connects(host, port, timeout_s)
    if why is None:
        return
    if endpoint:
        raise StorageError(
            f"object store endpoint {endpoint} is unreachable ({why}); "
            f"is the server running and storage.endpoint_url right?"
        ) from None
    raise StorageError(
        f"cannot reach S3 for {uri} ({host}: {why}); no network, or an S3-compatible store "
        f"without storage.endpoint_url (or AWS_ENDPOINT_URL)?"
    ) from None


def check_access(location: Location, storage: StorageConfig, create: bool = False) -> None:
    """One cheap request that surfaces wrong credentials or a missing bucket as a clear error."""
    check_endpoint(storage, location.uri)
    try:
        if create:
            location.fs.create_dir(location.path, recursive=True)
        location.fs.get_file_info(location.path)
    except OSError as exc:
        text = _describe(exc)
        if any(
            k in text
            for k in (
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "INVALID_ACCESS_KEY",
                "403",
                "Forbidden",
                "ACCESS_DENIED",
            )
        ):
            raise StorageError(
                f"storage at {location.uri} refused the credentials from the environment "
                f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): {text}"
            ) from None
        raise StorageError(f"cannot access {location.uri}: {text}") from None


def exists(location: Location) -> bool:
    return location.fs.get_file_info(location.path).type != pafs.FileType.NotFound


def stat(location: Location) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a file; StorageError when it is missing."""
    info = location.fs.get_file_info(location.path)
    if info.type != pafs.FileType.File:
        raise StorageError(f"missing file {location.uri}")
    return int(info.size or 0), int(info.mtime_ns or 0)


def read_bytes(location: Location) -> bytes:
    try:
        with location.fs.open_input_stream(location.path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise StorageError(f"missing file {location.uri}") from None
    except OSError as exc:
        raise StorageError(f"cannot read {location.uri}: {_describe(exc)}") from None


def write_bytes_atomic(location: Location, data: bytes) -> None:
    """Write so that readers never see a partial file.

    Local: write a temporary sibling, then rename (atomic on POSIX). S3: a single PUT or a
    completed multipart upload is atomic by itself. Other stores: temporary name, then move.
    """
    parent = posixpath.dirname(location.path)
    if parent:
        location.fs.create_dir(parent, recursive=True)
    if isinstance(location.fs, pafs.S3FileSystem):
        with location.fs.open_output_stream(location.path) as stream:
            stream.write(data)
        return
    tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(location.path)}")
    with location.fs.open_output_stream(tmp) as stream:
        stream.write(data)
    location.fs.move(tmp, location.path)


def list_files(location: Location, suffix: str = "", prefix: str = "") -> list[str]:
    """Scheme-less paths of the files directly in a folder (sorted); [] if it does not exist."""
    selector = pafs.FileSelector(location.path, allow_not_found=True, recursive=False)
    infos = location.fs.get_file_info(selector)
    names = [
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and posixpath.basename(i.path).endswith(suffix)
        and posixpath.basename(i.path).startswith(prefix)
    ]
    return sorted(names)


def delete_tree(location: Location) -> None:
    if exists(location):
        location.fs.delete_dir(location.path)


def delete_files(location: Location, paths: Iterable[str]) -> None:
    for path in paths:
        location.fs.delete_file(path)
