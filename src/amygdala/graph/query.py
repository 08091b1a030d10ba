"""The `memory_query` pipeline language: stages joined by `|`, applied left to right.

A query such as `all | type:episodic | weight:>=0.5 | sort:timestamp:desc | limit:20`
narrows, orders and cuts a list of nodes. It is parsed once into frozen stages, so a
typo is reported before any node is touched, with the stage's position and the list of
valid stages.

Stages:
    all                      every node (identity; a query may start with it)
    type:<node_type>         node_type equals it, or starts with it plus `_`
                             (`type:episodic` matches episodic_session, episodic_daily …);
                             a value with `*`, `?` or `[` is a glob instead
    key:<glob>               key matches the glob (case-sensitive, `*` crosses `#` and `/`)
    weight:<op><number>      op is one of > >= < <= = == !=; nodes without a weight drop out
    content-len:<op><n>      length of the raw content (tag lines included) in characters
    sort:<field>[:asc|desc]  field is key, timestamp, weight or content-len; ascending by
                             default; stable; nodes lacking the field go last either way
    limit:<n>                the first n nodes (n >= 0)

Timestamps sort by time when they read as ISO 8601 or epoch seconds (naive times count as
UTC), otherwise as text after every readable one.

Example:
    >>> from amygdala.graph.nodes import Node
    >>> nodes = [Node("a", "x", weight=0.2), Node("b", "yy", weight=0.9), Node("c", "z")]
    >>> [n.key for n in query_nodes("all | weight:>0.1 | sort:weight:desc", nodes)]
    ['b', 'a']
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from typing import Literal

from amygdala.graph.nodes import Node

SortField = Literal["key", "timestamp", "weight", "content-len"]
SORT_FIELDS: tuple[SortField, ...] = ("key", "timestamp", "weight", "content-len")
STAGE_NAMES = ("all", "type:", "key:", "weight:", "content-len:", "sort:", "limit:")

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    "=": operator.eq,
}
_COMPARISON = re.compile(r"^\s*(>=|<=|==|!=|>|<|=)\s*(\S+)\s*$")
_GLOB_CHARS = frozenset("*?[")


class QueryError(ValueError):
    """A query that cannot be parsed; the message names the stage and the fix."""


@dataclass(frozen=True)
class TypeStage:
    """Keep nodes of one node type (or type family, or glob)."""

    value: str

    def apply(self, nodes: list[Node]) -> list[Node]:
        if _GLOB_CHARS & set(self.value):
            return [
                n for n in nodes if n.node_type is not None and fnmatchcase(n.node_type, self.value)
            ]
        prefix = self.value + "_"
        return [
            n
            for n in nodes
            if n.node_type is not None
            and (n.node_type == self.value or n.node_type.startswith(prefix))
        ]


@dataclass(frozen=True)
class KeyStage:
    """Keep nodes whose key matches a glob."""

    pattern: str

    def apply(self, nodes: list[Node]) -> list[Node]:
        return [n for n in nodes if fnmatchcase(n.key, self.pattern)]


@dataclass(frozen=True)
class CompareStage:
    """Keep nodes whose weight or content length compares true against a number."""

    field: Literal["weight", "content-len"]
    op: str
    number: float

    def apply(self, nodes: list[Node]) -> list[Node]:
        compare = _OPS[self.op]
        kept = []
        for n in nodes:
            value = _numeric_field(n, self.field)
            if value is not None and compare(value, self.number):
                kept.append(n)
        return kept


@dataclass(frozen=True)
class SortStage:
    """Order nodes by one field; stable, missing values last in both directions."""

    field: SortField
    descending: bool = False

    def apply(self, nodes: list[Node]) -> list[Node]:
        present = [(n, _sort_value(n, self.field)) for n in nodes]
        have = [(n, v) for n, v in present if v is not None]
        missing = [n for n, v in present if v is None]
        have.sort(key=lambda pair: pair[1], reverse=self.descending)  # type: ignore[arg-type,return-value]
        return [n for n, _ in have] + missing


@dataclass(frozen=True)
class LimitStage:
    """Keep the first n nodes."""

    n: int

    def apply(self, nodes: list[Node]) -> list[Node]:
        return nodes[: self.n]


Stage = TypeStage | KeyStage | CompareStage | SortStage | LimitStage


def _numeric_field(node: Node, field: str) -> float | None:
    if field == "weight":
        return node.weight
    return float(len(node.content))


def timestamp_sort_key(value: str) -> tuple[int, float, str]:
    """Readable times (ISO 8601, epoch seconds) sort by time, anything else after them as text."""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return (0, number, "")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return (1, 0.0, value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (0, moment.timestamp(), "")


def _sort_value(node: Node, field: SortField) -> object | None:
    if field == "key":
        return node.key
    if field == "timestamp":
        return None if node.timestamp is None else timestamp_sort_key(node.timestamp)
    if field == "weight":
        return node.weight
    return len(node.content)


def _parse_comparison(name: str, arg: str, where: str) -> CompareStage:
    match = _COMPARISON.match(arg)
    number = None
    if match:
        try:
            number = float(match.group(2))
        except ValueError:
            number = None
    if match is None or number is None or not math.isfinite(number):
        raise QueryError(
            f"{where}: expected {name}:<op><number> with op one of > >= < <= = == != "
            f"(e.g. {name}:>=0.5), got {name}:{arg}"
        )
    field: Literal["weight", "content-len"] = "weight" if name == "weight" else "content-len"
    return CompareStage(field, match.group(1), number)


def _parse_sort(arg: str, where: str) -> SortStage:
    field, _, direction = arg.strip().partition(":")
    field, direction = field.strip(), direction.strip().lower()
    if field not in SORT_FIELDS:
        raise QueryError(
            f"{where}: cannot sort by {field!r}; sort fields: {', '.join(SORT_FIELDS)} "
            "(e.g. sort:timestamp:desc)"
        )
    if direction not in ("", "asc", "desc"):
        raise QueryError(f"{where}: sort direction must be asc or desc, got {direction!r}")
    return SortStage(field, descending=direction == "desc")


def _parse_limit(arg: str, where: str) -> LimitStage:
    text = arg.strip()
    if not text.isdigit():
        raise QueryError(f"{where}: expected limit:<n> with n a whole number >= 0, got limit:{arg}")
    return LimitStage(int(text))


def _require_value(name: str, arg: str, where: str) -> str:
    value = arg.strip()
    if not value:
        raise QueryError(f"{where}: {name}: needs a value, e.g. {name}:episodic")
    return value


def parse_stage(text: str, where: str) -> Stage | None:
    """One stage's text → a stage (None for `all`); raises QueryError."""
    stage = text.strip()
    if stage == "all":
        return None
    name, colon, arg = stage.partition(":")
    name = name.strip().lower()
    if not colon:
        name = ""
    if name == "type":
        return TypeStage(_require_value(name, arg, where))
    if name == "key":
        return KeyStage(_require_value(name, arg, where))
    if name in ("weight", "content-len"):
        return _parse_comparison(name, arg, where)
    if name == "sort":
        return _parse_sort(arg, where)
    if name == "limit":
        return _parse_limit(arg, where)
    raise QueryError(
        f"{where}: unknown stage {stage!r}; stages are {', '.join(STAGE_NAMES)} "
        "joined by | (e.g. all | type:episodic | limit:10)"
    )


def parse_query(text: str) -> tuple[Stage, ...]:
    """Parse a whole query; raises QueryError naming the first bad stage."""
    if not isinstance(text, str) or not text.strip():
        raise QueryError("empty query; pass 'all' for every node, or stages joined by |")
    parts = text.split("|")
    stages: list[Stage] = []
    for index, part in enumerate(parts, start=1):
        where = f"query {text.strip()!r}, stage {index}"
        if not part.strip():
            raise QueryError(f"{where}: empty stage (two | in a row, or a | at an end)")
        stage = parse_stage(part, where)
        if stage is not None:
            stages.append(stage)
    return tuple(stages)


def run_query(stages: Sequence[Stage], nodes: Sequence[Node]) -> list[Node]:
    """Apply parsed stages left to right; the input is not modified."""
    result = list(nodes)
    for stage in stages:
        result = stage.apply(result)
    return result


def query_nodes(text: str, nodes: Sequence[Node]) -> list[Node]:
    """Parse and run a query over nodes (graph order is kept unless a sort stage reorders)."""
    return run_query(parse_query(text), nodes)
