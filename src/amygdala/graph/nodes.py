"""The node shape every graph source produces, and the interface sources implement.

A file export and an MCP server are read into the same `GraphRead`, so selection and
everything after it cannot tell where the graph came from (the end-to-end test relies
on that: both give byte-identical training-data directories).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Node:
    """One memory-graph node as the selection stage sees it.

    `content` is the raw markdown, tag lines included; stripping them is the tag
    parser's job, so no source can forget to.
    """

    key: str
    content: str
    node_type: str | None = None  # episodic_session, episodic_daily, …, semantic
    timestamp: str | None = None
    weight: float | None = None
    provenance: str | None = None
    deleted: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"node key must be a non-empty string, got {self.key!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"node {self.key!r}: content must be a string")


@dataclass
class GraphRead:
    """What a source returns: live nodes (deleted and superseded removed) plus counts.

    `problems` holds one human-readable line per record that could not be used (e.g.
    `line 17: not valid JSON`), so the summary can report them by location. `details`
    says how a source read the graph, where that can differ (an MCP source: transport,
    listing and render formats, link footers stripped); flat JSON values, printed in the
    summary and stored in the manifest.
    """

    nodes: list[Node]
    source: str  # description for manifests, e.g. "file:graph.jsonl" or "mcp:http://…"
    records_seen: int = 0
    deleted: int = 0
    superseded: int = 0
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class GraphSource(Protocol):
    """Anything that can produce the live nodes of a memory graph."""

    def read(self) -> GraphRead:
        """Read the whole graph; raises `GraphError` when it cannot be read at all."""
        ...
