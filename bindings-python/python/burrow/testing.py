"""pytest plugin (registered through the ``pytest11`` entry point): an in-process edge.

    def test_my_service(edge):
        listener = burrow.forward(8080, domain="app.test", **edge.options())
        ...
"""

from __future__ import annotations

from typing import Iterator

import pytest

import burrow


@pytest.fixture
def edge() -> Iterator[burrow.Edge]:
    """A running edge on loopback that accepts any token; closed after the test."""
    e = burrow.Edge(open=True)
    try:
        yield e
    finally:
        burrow.kill()
        e.close()
