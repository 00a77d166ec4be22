"""Model files and their fingerprints.

A model file is written once, by its training stage, and read by the stages after it: by the
driver, to check that it fits before any cluster work and to record which model made each shard,
and by the actors that run it. Only the actors need the weights. On object storage a driver-side
read of a ResNet checkpoint costs seconds per stage, so the writer leaves a small JSON fingerprint
beside the file: its sha256 prefix and its header (kind, backbone, classes). The fingerprint is
trusted only while the model file's size and modification time are the ones it records (a store
without modification times never trusts it); a file replaced by hand, or one written without a
fingerprint, is read whole as before.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from ray_wsis.storage import Location, StorageError, exists, read_bytes, stat, write_bytes_atomic

FINGERPRINT_SUFFIX = ".fingerprint.json"
DIGEST_CHARS = 16


def digest(data: bytes) -> str:
    """The id a model file is known by in Parquet metadata and stage markers."""
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def fingerprint_location(model: Location) -> Location:
    return Location(model.fs, model.path + FINGERPRINT_SUFFIX, model.uri + FINGERPRINT_SUFFIX)


def write_model(location: Location, data: bytes, header: dict[str, Any]) -> None:
    """Write a model file, then its fingerprint (header: the fields a reader checks)."""
    write_bytes_atomic(location, data)
    size, mtime_ns = stat(location)
    record = {"digest": digest(data), "size": size, "mtime_ns": mtime_ns, "header": header}
    write_bytes_atomic(fingerprint_location(location), json.dumps(record, sort_keys=True).encode())


def fingerprint(location: Location) -> Optional[dict[str, Any]]:
    """The fingerprint when it still describes the file beside it, else None (also when either is missing)."""
    try:
        record = json.loads(read_bytes(fingerprint_location(location)))
        size, mtime_ns = stat(location)
    except (StorageError, ValueError):
        return None
    # a store without modification times (mtime 0) never qualifies: size alone cannot tell a retrained model
    if not mtime_ns or not isinstance(record, dict) or (record.get("size"), record.get("mtime_ns")) != (size, mtime_ns):
        return None
    return record


def model_digest(location: Location) -> str:
    """sha256 prefix of a model file ("" when there is none), from its fingerprint where valid."""
    record = fingerprint(location)
    if record is not None:
        return str(record["digest"])
    return digest(read_bytes(location)) if exists(location) else ""
