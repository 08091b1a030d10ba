"""One way to read the text a user hands us: files, JSON, JSONL lines, arguments, stdin.

Every reader (training data, graph exports, artifact manifests, extract's manifest)
goes through these helpers, so every hostile input gets the same clear answer:

* a path must be a regular file: a folder named like a file (`fear.jsonl/`), a FIFO or
  a device is refused with one line naming the path, before anything is read (a FIFO
  would block the read forever);
* bytes are decoded as UTF-8 (a leading byte order mark is dropped) with an error that
  says where, or with U+FFFD replacement where the caller asks for it;
* JSON is parsed with a bounded nesting depth (`MAX_JSON_DEPTH`), so a file nested
  100,000 levels is a `JSONError`, never a `RecursionError`; every other way `json`
  can fail (a 5,000-digit integer, a byte order mark) is a `JSONError` too;
* lone surrogates (`\\ud800` from a JSON escape, undecodable bytes of a command-line
  argument read with `surrogateescape`) are replaced with U+FFFD by `clean_text`, the
  helper every tokenizer call goes through (`amygdala.capture.tokenize`).

Example:
    >>> from amygdala.errors import GraphError
    >>> data = read_file_bytes(Path("graph.jsonl"), label="--graph graph.jsonl",
    ...                        error=GraphError)  # doctest: +SKIP
    >>> parse_json('{"a": [1, 2]}')
    {'a': [1, 2]}
    >>> clean_text("a\\ud800b")
    'a\\ufffdb'
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from amygdala.errors import AmygdalaError

MAX_JSON_DEPTH = 100  # nesting levels any JSON we read may have (manifests need ~4)
REPLACEMENT = "\ufffd"
BOM = b"\xef\xbb\xbf"

_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONError(ValueError):
    """Text that is not usable JSON; `reason` says why, `lineno`/`colno` where, if known."""

    def __init__(self, reason: str, lineno: int | None = None, colno: int | None = None):
        self.reason, self.lineno, self.colno = reason, lineno, colno
        where = f" at line {lineno} column {colno}" if lineno is not None else ""
        super().__init__(reason + where)


# -- text --------------------------------------------------------------------------------


def has_lone_surrogate(text: str) -> bool:
    """Does `text` hold a lone surrogate code point (not encodable as UTF-8)?"""
    return _SURROGATE.search(text) is not None


def clean_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (the same string when none).

    Tokenizers refuse such strings (`TextEncodeInput must be …`) and UTF-8 cannot
    encode them; they come from `\\ud800` JSON escapes and from bytes of a command-line
    argument or stdin that were not UTF-8.
    """
    return _SURROGATE.sub(REPLACEMENT, text) if has_lone_surrogate(text) else text


def decode_utf8(
    data: bytes, *, label: str, error: type[AmygdalaError], replace: bool = False
) -> str:
    """UTF-8 bytes → text (a leading BOM dropped); invalid bytes raise `error` naming
    `label` and the byte offset, or become U+FFFD with `replace=True`."""
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        return data.decode("utf-8", "replace" if replace else "strict")
    except UnicodeDecodeError as exc:
        raise error(
            f"{label}: not valid UTF-8 (byte {exc.start} is {data[exc.start]:#04x}); "
            "save it as UTF-8"
        ) from None


def text_argument(value: str, stdin: BinaryIO | None = None) -> str:
    """A text given on the command line, or read from stdin when it is `-`, ready to
    tokenize: stdin's bytes decoded as UTF-8 with U+FFFD for invalid bytes, lone
    surrogates (undecodable argument bytes) replaced too."""
    if value == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        data = stream.read()
        value = (data[len(BOM) :] if data.startswith(BOM) else data).decode("utf-8", "replace")
    return clean_text(value)


# -- files -------------------------------------------------------------------------------


def _open_regular(path: Path, label: str, error: type[AmygdalaError], folder_hint: str) -> int:
    """An fd of `path`, which must be a regular file (checked on the open fd, so a FIFO
    swapped in after a check is never read: it is opened non-blocking and refused)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{label}: no such file") from None
    except IsADirectoryError:  # Windows; POSIX opens a directory read-only
        raise error(f"{label} is a directory, not a file{folder_hint}") from None
    except NotADirectoryError:
        raise error(f"{label}: no such file (a folder on its path is a file)") from None
    except OSError as exc:
        raise error(f"{label}: cannot read it ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return fd
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise error(f"{label} is a directory, not a file{folder_hint}")
    raise error(f"{label} is not a regular file (a FIFO, device or socket); pass a file")


def read_file_bytes(
    path: str | os.PathLike[str],
    *,
    label: str | None = None,
    error: type[AmygdalaError],
    folder_hint: str = "",
) -> bytes:
    """The bytes of a regular file, or `error` with one line naming `label` (default: the
    path) and the cause: missing, a directory (`folder_hint` appended, e.g. "; pass the
    export file"), not a regular file, or unreadable."""
    target = Path(path)
    label = label or str(target)
    fd = _open_regular(target, label, error, folder_hint)
    try:
        with os.fdopen(fd, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise error(f"{label}: cannot read it ({exc.strerror or exc})") from None


def read_text_file(
    path: str | os.PathLike[str],
    *,
    label: str | None = None,
    error: type[AmygdalaError],
    folder_hint: str = "",
    replace: bool = False,
) -> str:
    """A regular file's UTF-8 text (`read_file_bytes`, then `decode_utf8`)."""
    label = label or str(path)
    data = read_file_bytes(path, label=label, error=error, folder_hint=folder_hint)
    return decode_utf8(data, label=label, error=error, replace=replace)


def read_json_file(
    path: str | os.PathLike[str],
    *,
    label: str | None = None,
    error: type[AmygdalaError],
    folder_hint: str = "",
) -> object:
    """A regular file's JSON value; unusable JSON raises `error` with the reason."""
    label = label or str(path)
    text = read_text_file(path, label=label, error=error, folder_hint=folder_hint)
    try:
        return parse_json(text)
    except JSONError as exc:
        raise error(f"{label} is not valid JSON ({exc})") from None


# -- JSON --------------------------------------------------------------------------------


def _too_deep(value: dict[str, object] | list[object], limit: int) -> bool:
    """Is `value` nested more than `limit` containers deep? (iterative: no recursion)"""
    stack: list[tuple[dict[str, object] | list[object], int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> object:
    """`json.loads` that only ever raises `JSONError` (a `ValueError`).

    Nesting deeper than `max_depth` containers is refused: the stdlib parser recurses
    and would raise `RecursionError` at ~1000 levels, and code reading the value could
    recurse as deep. Numbers too long for Python (`int` of >4300 digits) are refused too.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONError(exc.msg, exc.lineno, exc.colno) from None
    except RecursionError:
        raise JSONError(f"nested too deeply: more than {max_depth} levels") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string …"
        raise JSONError(str(exc).split(";")[0]) from None
    cheap = text.count("[") + text.count("{") <= max_depth  # cannot be deeper than that
    if isinstance(value, (dict, list)) and not cheap and _too_deep(value, max_depth):
        raise JSONError(f"nested too deeply: more than {max_depth} levels")
    return value


def jsonl_values(data: bytes) -> Iterator[tuple[int, object]]:
    """`(line number, value)` for each non-blank line of JSONL bytes; `value` is the
    decoded JSON, or a `JSONError` saying why the line is not usable (the caller skips
    and reports it: one bad line never stops a read). A BOM on line 1 is dropped."""
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if lineno == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield lineno, JSONError(f"not valid UTF-8 (byte {exc.start + 1} of the line)")
            continue
        try:
            yield lineno, parse_json(text)
        except JSONError as exc:
            where = f" at column {exc.colno}" if exc.colno is not None else ""
            yield lineno, JSONError(f"not valid JSON ({exc.reason}{where})")
