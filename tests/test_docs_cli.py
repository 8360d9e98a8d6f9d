"""
The user-facing text about the command line says what the code accepts: every route-string option is
named where the route language is described, once.
"""

from __future__ import annotations

import re

import pytest

from wsrouter.config import ROUTE_OPTIONS

from .support import REPO


def paragraph(text: str, start: str) -> str:
    """The text from C{start} (which must occur exactly once) to the next blank line."""
    assert text.count(start) == 1, start
    return text[text.index(start):].split("\n\n", 1)[0]


@pytest.mark.parametrize(("document", "start"), [
    ("docs/config.md", "On the command line the same route is one `--route` string"),
    ("README.md", "- **OPTIONS**, `key=value` separated by `;`"),
])
def test_route_options_are_all_documented(document: str, start: str) -> None:
    """The route language's description names each option a route string takes (config.spec.ROUTE_OPTIONS)."""
    text = paragraph((REPO / document).read_text(), start)
    named = set(re.findall(r"`([a-z-]+)(?:=[^`]*)?`", text))
    assert sorted(set(ROUTE_OPTIONS) - named) == []
