"""The file-export graph source: JSONL (one node per line) or a JSON array of nodes.

A user's export is rarely perfect, so one bad record never stops the read: it is
skipped and reported with its location (`line 17: not valid JSON …`). Only a file that
is missing, unreadable, not a regular file (a directory, a FIFO), nested deeper than
`MAX_JSON_DEPTH` (a JSON array), or holds no usable record at all raises `GraphError`
(read through `amygdala._text`, like every file amygdala reads).

Rules (docs/architecture.md, "Memory graph"): a later record with the same key supersedes an
earlier one (counted in `superseded`); a record with `"deleted": true` removes its key
(counted in `deleted`; it needs no content). A malformed record never supersedes: the
earlier record of its key, if any, stays in use and the problem line says so.

Example:
    >>> read = FileSource(Path("graph.jsonl")).read()  # doctest: +SKIP
    >>> len(read.nodes), read.problems[:1]  # doctest: +SKIP
    (312, ['line 17: not valid JSON (Expecting value at column 1), skipped'])
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amygdala._text import JSONError, decode_utf8, jsonl_values, parse_json, read_file_bytes
from amygdala.errors import GraphError
from amygdala.graph.nodes import GraphRead, Node


@dataclass(frozen=True)
class _Record:
    """One parsed record and where it came from (`line 3` / `item 3`)."""

    where: str
    key: str
    node: Node | None  # None for a tombstone (deleted record without content)
    deleted: bool


def _check_unicode(value: str, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"'{field}' holds an unpaired surrogate (\\u escape)") from None


def _optional_str(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"'{name}' must be a string, got {type(value).__name__}")


def _timestamp(obj: dict[str, Any]) -> str | None:
    value = obj.get("timestamp")
    if isinstance(value, bool):
        raise ValueError("'timestamp' must be a string or a number, got bool")
    if isinstance(value, (int, float)):  # epoch seconds: kept as written
        return json.dumps(value)
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"'timestamp' must be a string or a number, got {type(value).__name__}")


def _weight(obj: dict[str, Any]) -> float | None:
    value = obj.get("weight")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"'weight' must be a finite number, got {value!r}")
    return float(value)


def parse_record(obj: object, where: str) -> _Record:
    """Validate one decoded JSON value; raises ValueError with the reason."""
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object (got {type(obj).__name__})")
    key = obj.get("key")
    if key is None:
        raise ValueError("missing 'key'")
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"'key' must be a non-empty string, got {key!r}")
    _check_unicode(key, "key")
    deleted = obj.get("deleted", False)
    if deleted is None:
        deleted = False
    if not isinstance(deleted, bool):
        raise ValueError(f"'deleted' must be true or false, got {deleted!r}")
    content = obj.get("content")
    if content is None and deleted:
        return _Record(where, key, None, True)
    if content is None:
        raise ValueError(f"missing 'content' (key {key!r})")
    if not isinstance(content, str):
        raise ValueError(f"'content' must be a string, got {type(content).__name__} (key {key!r})")
    _check_unicode(content, "content")
    node = Node(
        key=key,
        content=content,
        node_type=_optional_str(obj, "node_type"),
        timestamp=_timestamp(obj),
        weight=_weight(obj),
        provenance=_optional_str(obj, "provenance"),
        deleted=deleted,
    )
    return _Record(where, key, node, deleted)


def _jsonl_values(data: bytes) -> Iterator[tuple[str, object | Exception]]:
    """(where, decoded value or the error) for every non-blank line."""
    for lineno, value in jsonl_values(data):
        yield f"line {lineno}", value


def _array_values(data: bytes, path: Path) -> Iterator[tuple[str, object | Exception]]:
    text = decode_utf8(data, label=f"--graph {path}", error=GraphError)
    try:
        values = parse_json(text)
    except JSONError as exc:
        raise GraphError(
            f"--graph {path}: starts with '[' but is not a valid JSON array ({exc}); fix "
            "it or export JSONL, one node per line, where a bad line only skips that node"
        ) from None
    if not isinstance(values, list):
        raise GraphError(f"--graph {path}: the top-level JSON value is not an array of nodes")
    for index, value in enumerate(values, start=1):
        yield f"item {index}", value


def _looks_like_array(data: bytes) -> bool:
    return data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


@dataclass(frozen=True)
class FileSource:
    """A graph export on disk: JSONL, or a JSON array when the file starts with `[`."""

    path: Path

    def describe(self) -> str:
        return f"file:{self.path}"

    def read(self) -> GraphRead:
        """Read the whole export (see the module docstring for the rules)."""
        path = Path(self.path)
        data = read_file_bytes(
            path,
            label=f"--graph {path}",
            error=GraphError,
            folder_hint="; pass the export file (.jsonl)",
        )
        values = _array_values(data, path) if _looks_like_array(data) else _jsonl_values(data)
        return _collect(values, self.describe(), path)


def _collect(
    values: Iterator[tuple[str, object | Exception]], source: str, path: Path
) -> GraphRead:
    """Apply supersede/delete rules to decoded values; bad records become problems."""
    latest: dict[str, _Record] = {}
    problems: list[str] = []
    seen = superseded = 0
    for where, value in values:
        seen += 1
        try:
            if isinstance(value, Exception):
                raise value
            record = parse_record(value, where)
        except ValueError as exc:
            problems.append(_problem(where, exc, value, latest))
            continue
        if record.key in latest:
            superseded += 1
        latest[record.key] = record
    if seen == 0:
        raise GraphError(
            f"--graph {path} holds no node records (empty file); export the "
            "memory graph as JSONL, one node per line"
        )
    if not latest:
        raise GraphError(
            f"--graph {path}: none of its {seen} records is a usable node "
            f"({problems[0]}); each needs a string 'key' and 'content'"
        )
    nodes = [r.node for r in latest.values() if not r.deleted and r.node is not None]
    deleted = sum(r.deleted for r in latest.values())
    return GraphRead(
        nodes=nodes,
        source=source,
        records_seen=seen,
        deleted=deleted,
        superseded=superseded,
        problems=problems,
    )


def _problem(where: str, exc: ValueError, value: object, latest: dict[str, _Record]) -> str:
    line = f"{where}: {exc}, skipped"
    key = value.get("key") if isinstance(value, dict) else None
    if isinstance(key, str) and key in latest:
        line += f"; the earlier record of {key!r} ({latest[key].where}) stays in use"
    return line
