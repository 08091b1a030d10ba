from __future__ import annotations

import pytest

from amygdala.errors import ConfigError
from amygdala.layers import parse_layers


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("3,18,33,36", [3, 18, 33, 36]),
        ("-1", [63]),
        ("0.0,0.5,1.0", [0, 32, 63]),
        ("5, 5 ,-59", [5]),
        ([1, 2], [1, 2]),
    ],
)
def test_parse(spec: str, expected: list[int]) -> None:
    assert parse_layers(spec, 64) == expected


def test_all() -> None:
    assert parse_layers("all", 4) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("64", "out of range"),
        ("-65", "out of range"),
        ("1.5", "outside"),
        ("x", "not a layer index"),
        ("", "empty"),
        ("0.x", "not a number"),
    ],
)
def test_errors_name_the_range(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_layers(spec, 64)
