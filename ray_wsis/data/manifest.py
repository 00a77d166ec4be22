"""Custom datasets without code: a manifest table plus a class-names file.

Manifest: ``.csv``, ``.jsonl`` or ``.parquet`` with columns

* ``image_uri`` (required): a local path or a URI (``s3://bucket/key.jpg``). Relative paths are
  joined onto ``root``, or onto the manifest's own folder when ``root`` is empty.
* ``labels`` (required): class names. JSONL/Parquet: a list of strings. CSV: names separated
  by ``|`` (``cat|dog``), or a JSON list (``["cat", "dog"]``). Empty: no class (a valid row).
* ``split`` (optional): rows without a split (no column, or an empty cell) are in ``train``.
  The split name ``all`` always means every row of the manifest.
* ``image_id`` (optional): defaults to the file stem of ``image_uri``; unique over the manifest.
* ``semantic_uri`` / ``instance_uri`` (optional): label PNGs (palette or gray, 0 background,
  255 void; instance PNG as VOC's SegmentationObject) for evaluation.

Class-names file: one name a line; ``#`` starts a comment; blank lines and a background
entry (``background``, ``_background_``, ``__background__``) are ignored. Class id k is the
k-th name.

Errors name rows by their 1-based number among data rows (the CSV header is not a row).
A row with an unknown class name is left out of the split and reported by :meth:`scan`;
a malformed URI or a duplicate image id is a mistake in the manifest as a whole and raises
:class:`DatasetError`. Files are not checked by :meth:`records` (one request per image);
:meth:`validate` does it on demand.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
import threading
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlparse

import numpy as np

from ray_wsis.config import StorageConfig
from ray_wsis.data.records import DatasetError, GroundTruth, ImageRecord
from ray_wsis.data.voc import Invalid, ground_truth_map, instances_from_maps, parallel_map, read_optional
from ray_wsis.storage import exists, is_remote, join, resolve

ALL_SPLITS = "all"
DEFAULT_SPLIT = "train"
LABEL_SEPARATOR = "|"
_BACKGROUND_NAMES = {"background", "_background_", "__background__"}
_BROKEN_SCHEME = re.compile(r"^(s3a?|gs|gcs|az|abfss?|https?|hdfs)(:/?(?!/)|//)", re.IGNORECASE)
"""``http//x``, ``s3:/bucket/k``, ``s3:bucket``: a scheme that lost its ``://``."""
_MAX_LISTED = 10


@dataclass(frozen=True)
class _Row:
    number: int
    image_id: str
    uri: str
    labels: Any
    split: str
    semantic_uri: str
    instance_uri: str


def read_class_names(uri: str, storage: StorageConfig) -> tuple[str, ...]:
    """Class names from a one-name-a-line file (see the module docstring)."""
    data = read_optional(resolve(uri, storage))
    if data is None:
        raise DatasetError(f"class names file {uri} does not exist")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"class names file {uri} is not UTF-8 text") from None
    names: list[str] = []
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.split("#", 1)[0].strip()
        if not name or name.lower() in _BACKGROUND_NAMES:
            continue
        if name in lines:
            raise DatasetError(f"class names file {uri}: {name!r} on lines {lines[name]} and {number}")
        if LABEL_SEPARATOR in name:
            raise DatasetError(
                f"class names file {uri} line {number}: {name!r} contains {LABEL_SEPARATOR!r}, the label separator"
            )
        lines[name] = number
        names.append(name)
    if not names:
        raise DatasetError(f"class names file {uri} lists no class")
    if len(names) > 254:
        raise DatasetError(f"class names file {uri} lists {len(names)} classes; 8-bit label maps hold 254")
    return tuple(names)


def uri_problem(uri: str) -> Optional[str]:
    """Why a manifest URI is malformed, or None if it looks usable."""
    if not uri:
        return "empty"
    if any(ord(c) < 32 for c in uri):
        return "contains control characters"
    if uri.startswith("://"):
        return "no scheme before ://"
    if "://" not in uri and _BROKEN_SCHEME.match(uri):
        return "looks like a URI without '://'"
    if is_remote(uri):
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            if not parsed.netloc:
                return f"no bucket or host after {parsed.scheme}://"
            if not parsed.path.strip("/"):
                return "no object key after the bucket or host"
    if uri.endswith("/"):
        return "names a folder, not a file"
    return None


def _base_of(manifest: str, root: str) -> str:
    base = root or (manifest.rsplit("/", 1)[0] if is_remote(manifest) else os.path.dirname(os.path.abspath(manifest)))
    return base if is_remote(base) else os.path.abspath(base)


def _absolute(uri: str, base: str) -> str:
    if uri.startswith("file://"):
        return os.path.abspath(uri[len("file://") :])
    if is_remote(uri) or os.path.isabs(uri):
        return uri
    joined = join(base, uri)
    return joined if is_remote(joined) else os.path.abspath(joined)


def _cell(value: Any) -> str:
    return "" if value is None else str(value).strip()


class ManifestSource:
    """A dataset described by a manifest table; see the module docstring for the format."""

    def __init__(self, manifest: str, class_names_file: str, root: str = "", storage: StorageConfig = StorageConfig()):
        if not manifest:
            raise DatasetError("dataset.manifest is empty: set it to a .csv, .jsonl or .parquet file")
        if not class_names_file:
            raise DatasetError("dataset.class_names_file is empty: set it to a file with one class name a line")
        self.manifest = manifest
        self.class_names_file = class_names_file
        self.root = root
        self.storage = storage
        self.class_names: tuple[str, ...] = read_class_names(class_names_file, storage)
        self._rows: Optional[list[_Row]] = None
        self._by_id: dict[str, _Row] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # the parsed table is re-read on first use
        return {
            "manifest": self.manifest,
            "class_names_file": self.class_names_file,
            "root": self.root,
            "storage": self.storage,
            "class_names": self.class_names,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._rows = None
        self._by_id = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ManifestSource(manifest={self.manifest!r}, class_names_file={self.class_names_file!r})"

    # -- reading the table

    def _table(self) -> list[dict[str, Any]]:
        data = read_optional(resolve(self.manifest, self.storage))
        if data is None:
            raise DatasetError(f"manifest {self.manifest} does not exist")
        ext = posixpath.splitext(urlparse(self.manifest).path if is_remote(self.manifest) else self.manifest)[1]
        ext = ext.lower()
        rows: list[dict[str, Any]]
        if ext == ".csv":
            try:
                reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
                header = [(h or "").strip() for h in (reader.fieldnames or [])]
                rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
            except (UnicodeDecodeError, csv.Error) as exc:
                raise DatasetError(f"manifest {self.manifest} is not a readable CSV file: {exc}") from None
        elif ext in (".jsonl", ".ndjson"):
            rows = []
            header_set: set[str] = set()
            try:
                lines = data.decode("utf-8-sig").splitlines()
            except UnicodeDecodeError:
                raise DatasetError(f"manifest {self.manifest} is not UTF-8 text") from None
            for line_number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(
                        f"manifest {self.manifest} line {line_number} (row {len(rows) + 1}) "
                        f"is not valid JSON: {exc.msg}"
                    ) from None
                if not isinstance(row, dict):
                    raise DatasetError(
                        f"manifest {self.manifest} line {line_number} (row {len(rows) + 1}) is not a JSON object"
                    )
                header_set.update(row)
                rows.append(row)
            header = sorted(header_set) if rows else []
        elif ext in (".parquet", ".pq"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(pa.BufferReader(data))
            except (pa.ArrowInvalid, OSError) as exc:
                raise DatasetError(f"manifest {self.manifest} is not a readable Parquet file: {exc}") from None
            header, rows = table.column_names, table.to_pylist()
        else:
            raise DatasetError(
                f"manifest {self.manifest}: unknown format {ext or '(no extension)'!r}; use .csv, .jsonl or .parquet"
            )
        for column in ("image_uri", "labels"):
            if column not in header:
                raise DatasetError(f"manifest {self.manifest} has no {column!r} column (columns: {list(header)})")
        return rows

    def _parse(self) -> list[_Row]:
        base = _base_of(self.manifest, self.root)
        rows: list[_Row] = []
        malformed: list[str] = []
        for number, raw in enumerate(self._table(), start=1):
            uri = _cell(raw.get("image_uri"))
            problem = uri_problem(uri)
            if problem:
                malformed.append(f"row {number} image_uri {uri!r}: {problem}")
                continue
            extra: dict[str, str] = {}
            for column in ("semantic_uri", "instance_uri"):
                value = _cell(raw.get(column))
                if value and uri_problem(value):
                    malformed.append(f"row {number} {column} {value!r}: {uri_problem(value)}")
                extra[column] = _absolute(value, base) if value else ""
            path = urlparse(uri).path if is_remote(uri) else uri
            image_id = _cell(raw.get("image_id")) or posixpath.splitext(posixpath.basename(path.replace("\\", "/")))[0]
            rows.append(
                _Row(
                    number,
                    image_id,
                    _absolute(uri, base),
                    raw.get("labels"),
                    _cell(raw.get("split")) or DEFAULT_SPLIT,
                    **extra,
                )
            )
        if malformed:
            listed = "; ".join(malformed[:_MAX_LISTED]) + (
                f"; and {len(malformed) - _MAX_LISTED} more" if len(malformed) > _MAX_LISTED else ""
            )
            raise DatasetError(f"manifest {self.manifest} has malformed URIs (rows are 1-based data rows): {listed}")
        by_id: dict[str, list[int]] = {}
        for row in rows:
            by_id.setdefault(row.image_id, []).append(row.number)
        duplicates = {i: n for i, n in by_id.items() if len(n) > 1}
        if duplicates:
            listed = "; ".join(
                f"{i!r} in rows {', '.join(map(str, n))}" for i, n in list(duplicates.items())[:_MAX_LISTED]
            )
            raise DatasetError(
                f"manifest {self.manifest} has duplicate image ids (rows are 1-based data rows; "
                f"set an image_id column to tell them apart): {listed}"
            )
        return rows

    def _all_rows(self) -> list[_Row]:
        with self._lock:
            if self._rows is None:
                self._rows = self._parse()
                self._by_id = {r.image_id: r for r in self._rows}
            return self._rows

    def _split_rows(self, split: str) -> list[_Row]:
        rows = self._all_rows()
        if split == ALL_SPLITS:
            chosen = rows
        else:
            chosen = [r for r in rows if r.split == split]
        if not chosen:
            splits = sorted({r.split for r in rows})
            raise DatasetError(
                f"split {split!r} is empty: no row of manifest {self.manifest} has it "
                f"(splits: {', '.join(splits) or 'none'}, or 'all')"
            )
        return chosen

    # -- labels

    def _class_ids(self, row: _Row) -> tuple[int, ...]:
        """The row's class ids; DatasetError naming the row for labels that cannot be used."""
        value = row.labels
        where = f"manifest {self.manifest} row {row.number}"
        if value is None:
            names: list[Any] = []
        elif isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    names = json.loads(text)
                except json.JSONDecodeError:
                    raise DatasetError(f"{where}: labels {text!r} is not a valid JSON list") from None
                if not isinstance(names, list):
                    raise DatasetError(f"{where}: labels {text!r} is not a list")
            else:
                names = [n for n in text.split(LABEL_SEPARATOR)] if text else []
        elif isinstance(value, (list, tuple, np.ndarray)):
            names = list(value)
        else:
            raise DatasetError(f"{where}: labels must be class names, got {type(value).__name__} {value!r}")
        index = {name: k for k, name in enumerate(self.class_names, start=1)}
        ids = set()
        for name in names:
            if not isinstance(name, str):
                raise DatasetError(f"{where}: labels must be class names, got {name!r}")
            name = name.strip()
            if not name:
                continue
            if name not in index:
                hint = f" (separate labels with {LABEL_SEPARATOR!r})" if any(s in name for s in ",;") else ""
                raise DatasetError(f"{where}: unknown class name {name!r}{hint}")
            ids.add(index[name])
        return tuple(sorted(ids))

    # -- DatasetSource

    def scan(self, split: str) -> tuple[list[ImageRecord], list[Invalid]]:
        """(records sorted by id, (image_id, reason) of rows with unusable labels)."""
        records: list[ImageRecord] = []
        invalid: list[Invalid] = []
        for row in self._split_rows(split):
            try:
                records.append(ImageRecord(row.image_id, row.uri, self._class_ids(row)))
            except DatasetError as exc:
                invalid.append((row.image_id, str(exc)))
        records.sort(key=lambda r: r.image_id)
        return records, invalid

    def records(self, split: str) -> list[ImageRecord]:
        return self.scan(split)[0]

    def invalid_records(self, split: str) -> list[Invalid]:
        return self.scan(split)[1]

    def validate(self, split: str = ALL_SPLITS, check_files: bool = True) -> list[Invalid]:
        """Every problem of a split's rows: bad labels and, with check_files, missing files.

        Manifest-wide mistakes (malformed URI, duplicate id) raise DatasetError instead.
        """
        rows = self._split_rows(split)
        _, problems = self.scan(split)
        if check_files:

            def missing(row: _Row) -> list[Invalid]:
                found = []
                for column, uri in (
                    ("image_uri", row.uri),
                    ("semantic_uri", row.semantic_uri),
                    ("instance_uri", row.instance_uri),
                ):
                    if uri and not exists(resolve(uri, self.storage)):
                        found.append(
                            (row.image_id, f"manifest {self.manifest} row {row.number}: {column} {uri} does not exist")
                        )
                return found

            for found in parallel_map(missing, rows):
                problems.extend(found)
        return problems

    def has_ground_truth(self, split: str) -> bool:
        return any(r.semantic_uri for r in self._split_rows(split))

    def ground_truth(self, image_id: str) -> Optional[GroundTruth]:
        self._all_rows()
        row = self._by_id.get(image_id)
        if row is None or not row.semantic_uri:
            return None
        data = read_optional(resolve(row.semantic_uri, self.storage))
        if data is None:
            return None
        semantic = ground_truth_map(data, row.semantic_uri)
        if not row.instance_uri:
            return GroundTruth(semantic=semantic)
        instance_data = read_optional(resolve(row.instance_uri, self.storage))
        if instance_data is None:
            return GroundTruth(semantic=semantic)
        instance_map = ground_truth_map(instance_data, row.instance_uri)
        if instance_map.shape != semantic.shape:
            raise DatasetError(f"{row.instance_uri} and {row.semantic_uri} differ in size")
        masks, class_ids = instances_from_maps(semantic, instance_map)
        return GroundTruth(semantic=semantic, instance_masks=masks, instance_class_ids=class_ids)
