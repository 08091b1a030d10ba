"""File export source: JSONL or JSON array, supersede/delete rules, bad records by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amygdala.errors import GraphError
from amygdala.graph.filesource import FileSource
from amygdala.graph.nodes import Node


def _write_lines(path: Path, lines: list[str | bytes | dict[str, object]]) -> Path:
    out = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        out += (line if isinstance(line, bytes) else line.encode()) + b"\n"
    path.write_bytes(out)
    return path


def _node(key: str, content: str = "some content", **extra: object) -> dict[str, object]:
    return {"key": key, "content": content, **extra}


def test_jsonl_nodes_with_metadata(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "g.jsonl",
        [
            _node(
                "journal#a",
                "first\nwarmth:9",
                node_type="episodic_session",
                timestamp="2026-04-02T10:00:00Z",
                weight=0.5,
                provenance="agent",
            ),
            _node("daily-2026-04-02", "second", timestamp=1775124000),
        ],
    )
    read = FileSource(path).read()
    assert read.nodes == [
        Node(
            "journal#a", "first\nwarmth:9", "episodic_session", "2026-04-02T10:00:00Z", 0.5, "agent"
        ),
        Node("daily-2026-04-02", "second", timestamp="1775124000"),
    ]
    assert (read.records_seen, read.deleted, read.superseded, read.problems) == (2, 0, 0, [])
    assert read.source == f"file:{path}"


def test_json_array_gives_the_same_nodes(tmp_path: Path) -> None:
    records = [_node("a", "x"), _node("b", "y"), _node("a", "z"), {"key": "b", "deleted": True}]
    jsonl = _write_lines(tmp_path / "g.jsonl", records)  # type: ignore[arg-type]
    array = tmp_path / "g.json"
    array.write_text("\n  " + json.dumps(records, indent=2))
    a, b = FileSource(jsonl).read(), FileSource(array).read()
    assert a.nodes == b.nodes == [Node("a", "z")]
    assert (b.records_seen, b.superseded, b.deleted) == (4, 2, 1)


def test_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps(_node("a")).encode()
        + b"\r\n"
        + json.dumps(_node("b")).encode()
        + b"\r\n"
    )
    assert [n.key for n in FileSource(path).read().nodes] == ["a", "b"]
    array = tmp_path / "g.json"
    array.write_bytes(b"\xef\xbb\xbf" + json.dumps([_node("a")]).encode())
    assert [n.key for n in FileSource(array).read().nodes] == ["a"]


def test_later_duplicates_supersede_earlier_ones(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "g.jsonl",
        [_node("a", "old a"), _node("b", "b"), _node("a", "new a"), _node("a", "newest a")],
    )
    read = FileSource(path).read()
    assert {n.key: n.content for n in read.nodes} == {"a": "newest a", "b": "b"}
    assert read.superseded == 2


def test_deleted_nodes_are_skipped_and_counted(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "g.jsonl",
        [
            _node("a"),
            _node("b", deleted=True),
            {"key": "a", "deleted": True},
            _node("c"),
            _node("d", deleted=False),
            _node("e", deleted=None),
        ],
    )
    read = FileSource(path).read()
    assert [n.key for n in read.nodes] == ["c", "d", "e"]
    assert (read.deleted, read.superseded, read.records_seen) == (2, 1, 6)


def test_a_node_deleted_and_then_written_again_is_live(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "g.jsonl", [_node("a", "v1"), {"key": "a", "deleted": True}, _node("a", "v2")]
    )
    read = FileSource(path).read()
    assert read.nodes == [Node("a", "v2")]
    assert (read.deleted, read.superseded) == (0, 2)


def test_malformed_lines_are_reported_with_their_line_number(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "g.jsonl",
        [
            _node("good1"),  # 1
            "",  # 2 blank: not a record
            "{not json",  # 3
            b'{"key": "x", "content": "caf\xe9"}',  # 4 latin-1 byte
            '["a", "list"]',  # 5
            {"content": "no key"},  # 6
            {"key": "k7"},  # 7
            {"key": 7, "content": "c"},  # 8
            {"key": "", "content": "c"},  # 9
            {"key": "k10", "content": ["not", "text"]},  # 10
            {"key": "k11", "content": "c", "deleted": "yes"},  # 11
            {"key": "k12", "content": "c", "weight": "heavy"},  # 12
            {"key": "k13", "content": "c", "node_type": 3},  # 13
            '{"key": "k14", "content": "\\ud800 lone"}',  # 14 unpaired surrogate
            {"key": "k15", "content": "c", "weight": True},  # 15
            "   ",  # 16 blank
            _node("good2"),  # 17
        ],
    )
    read = FileSource(path).read()
    assert [n.key for n in read.nodes] == ["good1", "good2"]
    assert read.records_seen == 15
    expected_starts = {
        3: "not valid JSON",
        4: "not valid UTF-8",
        5: "not a JSON object (got list)",
        6: "missing 'key'",
        7: "missing 'content'",
        8: "'key' must be a non-empty string",
        9: "'key' must be a non-empty string",
        10: "'content' must be a string, got list",
        11: "'deleted' must be true or false",
        12: "'weight' must be a finite number",
        13: "'node_type' must be a string",
        14: "'content' holds an unpaired surrogate",
        15: "'weight' must be a finite number",
    }
    assert len(read.problems) == len(expected_starts)
    for problem, (line, start) in zip(read.problems, expected_starts.items()):
        assert problem.startswith(f"line {line}: {start}"), problem
        assert problem.endswith("skipped")


def test_a_malformed_update_does_not_supersede(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "g.jsonl", [_node("a", "good"), {"key": "a", "content": 5}])
    read = FileSource(path).read()
    assert read.nodes == [Node("a", "good")]
    assert read.superseded == 0
    assert read.problems == [
        "line 2: 'content' must be a string, got int (key 'a'), skipped; "
        "the earlier record of 'a' (line 1) stays in use"
    ]


def test_array_items_are_reported_by_position(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text(json.dumps([_node("a"), 5, {"key": "b"}]))
    read = FileSource(path).read()
    assert read.problems == [
        "item 2: not a JSON object (got int), skipped",
        "item 3: missing 'content' (key 'b'), skipped",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "holds no node records"),
        (b"\n  \n", "holds no node records"),
        (b"{bad\n[1]\n", "none of its 2 records is a usable node (line 1: not valid JSON"),
        (b'[{"key": "a", "content": "x"},,]', "not a valid JSON array"),
        (b'[{"key": "a", "content": "\xff"}]', "not valid UTF-8"),
        (b"[1] [2]", "not a valid JSON array (Extra data"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"  [1, 2", "not a valid JSON array (Expecting"),
    ],
)
def test_unusable_files_raise_graph_error(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "g.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(GraphError, match=r"^--graph ") as info:
        FileSource(path).read()
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_a_directory_is_not_a_graph(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match="is a directory"):
        FileSource(tmp_path).read()


def test_an_all_deleted_graph_reads_as_empty_not_as_an_error(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "g.jsonl", [{"key": "a", "deleted": True}])
    read = FileSource(path).read()
    assert (read.nodes, read.deleted) == ([], 1)


def test_unicode_content_is_kept_exactly(tmp_path: Path) -> None:
    text = "Über den Fluss — 川を渡る 🌊\nwarmth:9"
    path = _write_lines(tmp_path / "g.jsonl", [_node("ü", text)])
    assert FileSource(path).read().nodes == [Node("ü", text)]
