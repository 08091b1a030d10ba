"""Memory graph stage: nodes from a file export or an MCP server, emotion tag lines,
and the selection that turns tagged nodes into a training-data directory."""

from amygdala.graph.nodes import GraphRead, GraphSource, Node

__all__ = ["GraphRead", "GraphSource", "Node"]
