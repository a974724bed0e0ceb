"""The shared option table (tests-shared/option_cases.json), through Python's types.

The Rust and Node suites run the same cases: Python and Node must parse the same
options into the same endpoint, or refuse them with the same code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

import burrow
from burrow import _burrow

from conftest import Cert, Pki

TABLE = json.loads((Path(__file__).parent.parent / "tests-shared" / "option_cases.json").read_text())
CASES: List[Dict[str, Any]] = TABLE["cases"]


class Fixtures:
    """A CA and one leaf per name, made once for the whole table."""

    def __init__(self) -> None:
        self.pki = Pki("option table CA")
        self.leaves: Dict[str, Cert] = {}

    def leaf(self, name: str) -> Cert:
        if name not in self.leaves:
            self.leaves[name] = self.pki.leaf(name)
        return self.leaves[name]


@pytest.fixture(scope="module")
def pki() -> Fixtures:
    return Fixtures()


def native(value: Any, pki: Fixtures) -> Any:
    """A table value as a Python user would pass it (bytes for PEM)."""
    if isinstance(value, list):
        return [native(v, pki) for v in value]
    if not isinstance(value, str) or not value.startswith("$"):
        return value
    kind, _, name = value.partition(":")
    if kind == "$ca":
        return pki.pki.ca_pem
    if kind == "$not-utf8":
        return b"\xff\xfe--"
    leaf = pki.leaf(name)
    return {"$crt": leaf.crt, "$key": leaf.key,
            "$crt-text": leaf.crt.decode(), "$key-text": leaf.key.decode()}[kind]


def lookup(tree: Any, path: str) -> Any:
    for key in path.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_option_case(case: Dict[str, Any], pki: Fixtures) -> None:
    options = {k: native(v, pki) for k, v in case["options"].items()}
    scope = case.get("scope", "forward")
    if "error" in case:
        with pytest.raises(burrow.Error) as info:
            _burrow.parse_options(options, scope)
        assert info.value.code == case["error"], info.value
        assert case.get("message", "") in info.value.message
    else:
        described = json.loads(_burrow.parse_options(options, scope).describe())
        for path, want in case["expect"].items():
            assert lookup(described, path) == want, f"{path} in {described}"


def test_path_values_are_read_as_files(tmp_path: Path, pki: Fixtures) -> None:
    leaf = pki.leaf("p.example.com")
    (tmp_path / "c.pem").write_bytes(leaf.crt)
    (tmp_path / "k.pem").write_bytes(leaf.key)
    parsed = _burrow.parse_options({"domain": "p.example.com", "crt": tmp_path / "c.pem",
                                    "key": tmp_path / "k.pem"}, "forward")
    assert json.loads(parsed.describe())["terminate_at"] == "edge"
    with pytest.raises(burrow.Error) as info:
        _burrow.parse_options({"crt": tmp_path / "missing.pem", "key": tmp_path / "k.pem"}, "forward")
    assert info.value.code == "IO" and "missing.pem" in info.value.message
