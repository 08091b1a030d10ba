"""Concept (emotion) names: one rule, wherever a name enters the package.

A name is normalized by stripping surrounding whitespace, lowercasing and turning `-`
into `_` (`On-Edge` → `on_edge`); the normalized name is valid when it is an ASCII word
of lowercase letters, digits and `_` that starts with a letter or a digit (`NAME_RE`).
Tag lines (`amygdala.graph.tags`), `--emotions` (`amygdala.graph.select`), the rows of a
training-data directory and the file names of a stories corpus (`amygdala.corpus`) all
read names through `concept_name`, so a name one of them accepts means the same concept
in all of them.

Example:
    >>> concept_name(" On-Edge "), concept_name("2nd_wind"), concept_name("no way")
    ('on_edge', '2nd_wind', None)
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")  # a normalized, valid concept name
NAME_RULE = "a word of letters, digits, '_' or '-', starting with a letter or digit"


def normalize_name(name: str) -> str:
    """`On-Edge` → `on_edge`: surrounding whitespace stripped, lowercase, `-` → `_`."""
    return name.strip().lower().replace("-", "_")


def concept_name(name: str) -> str | None:
    """The normalized name, or None when it is not a valid concept name (`NAME_RULE`)."""
    normalized = normalize_name(name)
    return normalized if NAME_RE.fullmatch(normalized) else None
